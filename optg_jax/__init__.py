"""optg-jax: OptG sparse training as an optax transformation, plus a Flax training program."""
