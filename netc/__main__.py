from netc.cli import main

raise SystemExit(main())
