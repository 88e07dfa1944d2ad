from llmkern.apps.cli import main

raise SystemExit(main())
