"""The training program: `train.py` and the modules only it needs.

`training` (the loop, `train_and_evaluate`), `steps` (the train state and the jitted train and
eval steps), `config`, `checkpoints`, `metrics`, `data` (the input pipelines) and `models` (the
model zoo). Install them with `pip install optg-jax[train]`; the library itself (`optg_jax`)
needs none of their dependencies. Nothing is imported here, so importing one module does not
load the others (`data` imports TensorFlow).
"""
