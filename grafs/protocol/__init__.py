"""What grafs runs on top of a search: built-in task searches with their restarts and checks
(:mod:`~grafs.protocol.task_search`), the evaluation protocol (:mod:`~grafs.protocol.evaluate`)
and its runs in worker processes with their cache (:mod:`~grafs.protocol.runs`)."""
