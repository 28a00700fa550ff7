"""Everything lbfood prints or writes for the user: progress and tables (render*.py, Rich), report files
(writers.py), a sweep's sweep.md (sweep_files.py) and pictures (plots.py, matplotlib). The engine never
imports this package; the commands hand it what the engine returned."""
