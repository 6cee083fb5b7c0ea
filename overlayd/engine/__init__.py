"""The engine's procedures, one module each: create, commit, teardown, recover, diff.

Each is synchronous and lock-free (the manager runs it in a worker thread under the
overlay's lock), acts on the kernel only through ``host.ports``, and returns what it did;
none changes an overlay's state or writes a record: the manager alone does, through
``transitions`` and ``store.StateStore``. ``steps`` holds what several of them share.
"""
