"""Load tests of the reference service on its real stack, and the audit that judges them.

``python -m loadtest register`` (or ``claim``), run from ``examples/reference_service``,
starts the service in real mode on loopback (several uvicorn processes, queue workers,
PostgreSQL and Redis, the relayer failing a share of its sends), drives it with Locust in
headless mode, then audits what the database, the queues and the metrics say against what
the clients saw. The audit's invariants, not the throughput, decide the exit status.
"""
