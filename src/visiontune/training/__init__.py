"""Training: one pipeline (`pipeline.train`), two fitters (`finetune`, `features.fit`), one loop (`trainer`).

Nothing is imported here, so `training.events` (the Callback base the CLI's display extends) stays light.
"""
