"""Sources: each owns its state and its I/O, polls on its own schedule, and hands plain data to the
metric modules (mlops_kpi_exporter.metrics), whose families go to the snapshot."""
