"""The bus adapter: the only code that imports dbus-next.

``names`` (the contract's names), ``errors`` (the error table: exceptions -> D-Bus errors,
once), ``connection`` and ``writer`` (the MessageBus with dbus-next's rough edges filed off),
``auth`` (who may change what), ``spec`` (decoding the a{sv} arguments), ``objects`` (the
Manager and Overlay objects, the property table), ``service`` (objects in step with the
manager, authorization, the operations), ``server`` (connect, export, own the name),
``client`` (overlayctl's side).
"""
