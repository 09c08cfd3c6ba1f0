"""amr_fast: Adversarial Mixup Resynthesis (Beckham et al., 2019) and Manifold Mixup (Verma et al., 2019).

The mixing ops live in `amr_fast.kernels` (spec: `amr_fast.mixing`); the trainer in `amr_fast.train`; the
data pipeline in `amr_fast.data`; the command line in `amr_fast.cli`.
"""

__version__ = "0.1.0"
