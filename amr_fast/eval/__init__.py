"""Evaluation and outputs of AMR runs (Beckham et al., NeurIPS 2019, section 4): image grids (`grids`), the
linear probe on frozen codes (`probe`), disentanglement metrics on dSprites (`disentangle`), results tables and
learning curves (`report`), and the `amr-fast eval` / `mix` / `report` commands."""
