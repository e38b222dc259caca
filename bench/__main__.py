"""`python -m bench`: the thread caps go into the environment before numpy or torch is imported."""
from .threads import set_env_before_import

set_env_before_import()

from .cli import main  # noqa: E402

raise SystemExit(main())
