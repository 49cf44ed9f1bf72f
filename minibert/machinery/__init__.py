"""The operations code: what makes a long run safe to stop, resume and feed. A learner can skip it.

Nothing here is needed to understand how minibert learns; it keeps a run exact and its files whole:

- ``resume.py``: what a checkpoint holds beyond Lightning's own, a clean stop on Ctrl-C or SIGTERM,
  and finding the checkpoint that ``--ckpt_path last`` names;
- ``sampler.py``: the order of the training samples, and the training loader whose state (its place in the
  epoch) Lightning saves in every checkpoint and gives back on resume;
- ``checkpoint.py``: checkpoints written atomically, and checked before anything is loaded;
- ``files.py``: writing a file whole or not at all, and output folders checked before any work;
- ``cache.py``, ``download.py``: the arrays of an encoded corpus kept on disk (``encode.py`` makes them), and
  Europarl fetched once;
- ``options.py``: option errors as one line;
- ``lightning_internals.py``: every use of a private part of Lightning, each behind one small function;
- ``allocator.py``: CPU runs reuse freed memory from one step to the next (speed only);
- ``clipping.py``: gradient clipping by norm whose scaling a fused optimizer's step does (speed only);
- ``c_library.py``: a C file of the package (``fused_loss.c``, ``fast.c``, ``attention.c``, speed only) built and loaded once per process.
"""
