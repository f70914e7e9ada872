"""Training machinery: the DeepSpeed wrapper (ds.py, the only module that imports
deepspeed), train/eval loops (loop.py), checkpoints (checkpoint.py), logs (logs.py)
and the stage-1 driver (stage1.py)."""
