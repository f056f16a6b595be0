"""The runtimes' implementations, one module per runtime, each a ``BackendImpl`` (``mobiforge.backend_api``): loaded
on first use by the row of the ``BACKENDS`` table that names it."""
