"""engine: the machinery every task shares, with no knowledge of any one task.

Networks and their registry (`models`, `networks`), device and seeding (`runtime`), inference with a
sliding window and Monte-Carlo dropout (`inference`), images too large for memory predicted block by
block (`tiled`), the in-memory training data and its batched
augmentation (`data`, `transforms`), checkpoints and resume (`checkpoint`), one training loop with hooks
(`trainer`) and inference timing (`timing`). A task (snakescope.tasks) hands the engine what differs
(its loss, its validation score, how to read a label), so the engine never asks which task it serves.
"""
