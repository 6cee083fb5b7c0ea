"""Property tables: an object's read-only D-Bus properties, each defined once as a row
(name, type, how it changes, how it is read), and what the bus objects make of a table:
a getter per row for dbus-next, every value at once (GetAll, GetManagedObjects,
InterfacesAdded), the signalled ones (PropertiesChanged), and the introspection.

The Overlay's table is ``objects.PROPERTIES`` (read from a ``Reading``), the Job's is
``jobs.JOB_PROPERTIES`` (read from the Job object itself). A new row needs nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar
from xml.etree import ElementTree as ET

from dbus_next import Variant
from dbus_next import introspection as intr
from dbus_next.constants import PropertyAccess
from dbus_next.service import dbus_property

# How a property changes: the values of org.freedesktop.DBus.Property.EmitsChangedSignal.
CONST = "const"  # never, once the object exists
SIGNALLED = "true"  # announced with PropertiesChanged
LIVE = "false"  # with every write in the overlay: read live on every Get, never announced
EMITS = "org.freedesktop.DBus.Property.EmitsChangedSignal"

S = TypeVar("S")  # what a row reads its value from


@dataclass(frozen=True)
class BusProperty(Generic[S]):
    """A row. READ returns a new value on every call (a new list, never one kept and
    changed in place): the bus keeps the last values it marshalled to compare with."""

    name: str
    signature: str
    changes: str  # CONST, SIGNALLED or LIVE
    read: Callable[[S], Any]


def readings(table: Sequence[BusProperty[S]], source: S) -> list[Any]:
    """The plain values of TABLE's rows, in its order: cheap to compare, no Variant made."""
    return [p.read(source) for p in table]


def variants(table: Sequence[BusProperty[S]], values: list[Any]) -> dict[str, Variant]:
    """VALUES (from ``readings``) as the a{sv} dbus-next sends."""
    return {p.name: Variant(p.signature, v) for p, v in zip(table, values, strict=True)}


def values(table: Sequence[BusProperty[S]], source: S) -> dict[str, Variant]:
    """TABLE's values read from SOURCE, as sent."""
    return variants(table, readings(table, source))


def signalled(table: Sequence[BusProperty[S]]) -> tuple[BusProperty[S], ...]:
    return tuple(p for p in table if p.changes == SIGNALLED)


def with_properties(table: Sequence[BusProperty[S]], source: Callable[[Any], S]
                    ) -> Callable[[type], type]:
    """A class decorator: a dbus-next getter for each row of TABLE, reading from
    SOURCE(self)."""
    def getter(prop: BusProperty[S]) -> Any:
        def get(self: Any) -> Any:
            return prop.read(source(self))

        get.__name__ = get.__qualname__ = prop.name  # dbus-next calls it by this name
        get.__annotations__ = {"return": prop.signature}  # and reads its type here
        return dbus_property(access=PropertyAccess.READ, name=prop.name)(get)

    def decorate(cls: type) -> type:
        for prop in table:
            setattr(cls, prop.name, getter(prop))
        return cls

    return decorate


class TableProperties:
    """For an interface whose properties are a table's rows: every value at once, read
    from ``property_source()`` (None: the object went meanwhile, and it has no values,
    so that one object cannot fail a GetManagedObjects of all). The bus compares the
    plain ``property_readings()`` to reuse what it marshalled of the same values
    (connection.py); ``property_variants`` turns them into what is sent."""

    property_table: ClassVar[tuple[BusProperty[Any], ...]] = ()

    def property_source(self) -> Any | None:
        raise NotImplementedError

    def property_readings(self) -> list[Any]:
        source = self.property_source()
        return [] if source is None else readings(self.property_table, source)

    def property_variants(self, values: list[Any]) -> dict[str, Variant]:
        return variants(self.property_table, values) if values else {}

    def property_values(self) -> dict[str, Variant]:
        return self.property_variants(self.property_readings())


class Described(Protocol):
    """What the introspection needs of a row."""

    @property
    def name(self) -> str: ...
    @property
    def signature(self) -> str: ...
    @property
    def changes(self) -> str: ...


class AnnotatedProperty(intr.Property):  # type: ignore[misc]
    """A read-only property that says how it changes (dbus-next cannot annotate them)."""

    def __init__(self, prop: Described) -> None:
        super().__init__(prop.name, prop.signature, PropertyAccess.READ)
        self.changes = prop.changes

    def to_xml(self) -> ET.Element:
        element: ET.Element = super().to_xml()
        if self.changes != SIGNALLED:  # "true" is what a property without it means
            ET.SubElement(element, "annotation", name=EMITS, value=self.changes)
        return element
