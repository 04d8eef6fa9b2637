"""Staging (README stages 1-3): read the corpus, chunk it, write input shards.

It runs in both processes: on the producer (``producer submit``/``run``, orchestrated by
``producer/ingest.py``) and on workers consuming the ``stage`` queue (``--stage-on fleet``,
``worker/stage_task.py``), so it lives below both. In the order a document passes them:

    corpus.py     stage 1: formats and judging one line/row (a record or a reject)
    splits.py     stage 3: cut the corpus into splits; read one split (the only read loop)
    chunking.py   stage 2: chunk one document within the window (pure)
    tokenwise.py  stage 2: tokenise once; when token counts add up across pieces
    fastcount.py  stage 2: the fast encoder for short documents (nanotoken where it agrees)
    shards.py     stage 3: stage one split into input shards + ledger checkpoints
    pool.py       stage 3: stage many splits in parallel processes
    fleet.py      stage 3 on a worker: one split per stage task; completing staging
    faults.py     failpoints for the staging crash tests

Light on purpose: no onnxruntime, no Celery task code (the producer imports it).
"""
