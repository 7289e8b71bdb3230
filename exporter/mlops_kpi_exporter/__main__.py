from mlops_kpi_exporter.cli import main

raise SystemExit(main())
