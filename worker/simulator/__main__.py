"""``python -m worker.simulator``: see worker/simulator/entry.py."""

from worker.simulator.entry import main

raise SystemExit(main())
