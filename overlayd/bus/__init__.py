"""The bus adapter: the only code that imports dbus-next.

``names`` (the contract's names), ``errors`` (exceptions -> D-Bus errors, once),
``connection`` (the MessageBus with dbus-next's rough edges filed off), ``auth`` (who may
change what), ``service`` (the Manager and Overlay objects), ``client`` (overlayctl's side).
"""
