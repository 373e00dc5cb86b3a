"""ankle_jax: the Kitamura et al. (2019) ankle-fracture CNN ensemble in JAX/Flax."""

__version__ = '0.1.0'
