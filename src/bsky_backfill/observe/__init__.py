"""The operator's view of a run: progress, Prometheus metrics, structured logs.

Where it sits: beside the engine, which never calls in here (STYLE habit 9).
Everything listens to the hooks a `Backfill` offers: `on_tick` (every scheduler
iteration), `on_commit` (each durable batch) and `on_decode` (each repo's
extraction time), and reads `Backfill.stats` / `.slots` / `.store`.

For a caller (the CLI, the Python API), one pair of calls (observe/start.py):

    observers = start_observers(backfill, metrics_port=9100, live_progress=True)
    try:
        summary = await backfill.run()
        observers.finish(summary)
    finally:
        observers.close()

The package itself imports nothing: `observe.logs` (which the CLI sets up
before anything else) must not load the metrics server and the terminal UI.
"""
