"""Domain dataclasses to and from protobuf messages and plain data, field by field by name.

A dataclass that mirrors a message needs no hand-written conversion: a field added to both
(and to the config model) carries through config, store, admin answers, snapshots and agents.
Nested messages become the nested dataclasses the type hints name, repeated fields tuples, maps
dicts, and an enum the domain enum whose values are the proto value names without the enum's
prefix, in lower case (REPLICA_STATE_READY <-> "ready"). Fields one side lacks are left out:
the dataclass's default, or unset in the message. Typed validation is pydantic's."""

from __future__ import annotations

import dataclasses
import enum
import functools
import typing
from collections.abc import Mapping
from typing import Any, TypeVar, cast

from google.protobuf.message import Message
from pydantic import TypeAdapter

T = TypeVar("T")
M = TypeVar("M", bound=Message)


@functools.cache
def _adapter(cls: Any) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def adapter(cls: type[T]) -> TypeAdapter[T]:
    """pydantic's validator and serializer for cls (built once per class)."""
    key: Any = cls  # classes hash by identity (mypy does not see type[T] as Hashable)
    return cast("TypeAdapter[T]", _adapter(key))


def from_data(cls: type[T], data: Mapping[str, Any]) -> T:
    """cls from plain data (a config model's dump, decoded JSON): lists become tuples, nested
    mappings nested dataclasses; keys cls does not have are ignored."""
    return adapter(cls).validate_python(data)


def to_json(obj: Any) -> bytes:
    return adapter(type(obj)).dump_json(obj)


def from_json(cls: type[T], text: str | bytes) -> T:
    """cls from to_json's output; fields missing from older JSON take their defaults."""
    return adapter(cls).validate_json(text)


def from_proto(cls: type[T], msg: Message, *, zeros: bool = False, **given: Any) -> T:
    """cls from msg's fields of the same name, then `given` over them.

    Without `zeros`, a field the message leaves at zero ("", 0, empty) takes cls's default, as
    proto3 cannot tell unset from zero: that suits specs people write (a pool with no policy
    gets round_robin). A field without a default takes the zero (an empty id, which validation
    then names). Fields with presence (proto3 `optional`, messages) count when set, zero or
    not. With `zeros`, zero is a value: reports machines write (a KV cache 0% full)."""
    data = message_values(msg, cls, zeros=zeros)
    data.update(given)
    return adapter(cls).validate_python(data)


def message_values(msg: Message, cls: Any = None, *, zeros: bool = False) -> dict[str, Any]:
    """msg as plain data for dataclass cls (see from_proto for which fields it holds)."""
    descriptor = msg.DESCRIPTOR
    nested = _nested_types(cls) if cls is not None else {}
    data: dict[str, Any] = {}
    if zeros:
        for f in _fields(descriptor):
            if f.presence and not msg.HasField(f.name):
                continue
            value = getattr(msg, f.name)
            data[f.name] = value if f.shape == _SCALAR else _plain(f, value, zeros, nested)
        return data
    by_name = _fields_by_name(descriptor)
    for fd, value in msg.ListFields():
        f = by_name[fd.name]
        data[f.name] = value if f.shape == _SCALAR else _plain(f, value, zeros, nested)
    if cls is not None:
        for name in _required(cls):
            required = by_name.get(name)
            if required is not None and name not in data:
                # No default to fall back on: the zero it holds is the value.
                data[name] = _plain(required, getattr(msg, name), zeros, nested)
    return data


@functools.cache
def _required(cls: Any) -> tuple[str, ...]:
    """cls's fields without a default."""
    return tuple(
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )


@functools.cache
def _nested_types(cls: Any) -> dict[str, Any]:
    """Per field of cls, the dataclass its type holds (Template | None, tuple[RouteRule, ...]),
    if any."""
    hints = typing.get_type_hints(cls)
    return {f.name: _dataclass_in(hints[f.name]) for f in dataclasses.fields(cls)}


def _dataclass_in(tp: Any) -> Any:
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def to_proto(obj: Any, cls: type[M], **given: Any) -> M:
    """A cls message from obj's dataclass fields of the same name (None ones left unset), with
    `given` over them (message or plain values)."""
    values = dataclass_values(obj, cls.DESCRIPTOR)
    values.update(given)
    return cls(**values)


def dataclass_values(obj: Any, descriptor: Any) -> dict[str, Any]:
    """obj's fields that descriptor's message has, as values its constructor takes."""
    fields = _fields_by_name(descriptor)
    values: dict[str, Any] = {}
    cls: Any = type(obj)
    for name in _names(cls):
        f = fields.get(name)
        if f is None:
            continue
        value = getattr(obj, name)
        if value is not None:
            values[name] = value if f.shape == _SCALAR else _message_value(f, value)
    return values


@functools.cache
def _names(cls: Any) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def shared_fields(obj: Any, cls: type) -> dict[str, Any]:
    """obj's dataclass fields that dataclass cls has too, by name (for building one domain type
    from another, e.g. a routing member from a backend)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name in names}


# ---- one field each way

# How a field's value converts; sub is its enum's or message's descriptor where it has one.
_SCALAR, _ENUM, _MESSAGE, _LIST, _ENUM_LIST, _MESSAGE_LIST, _MAP, _MESSAGE_MAP = range(8)


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    shape: int
    presence: bool
    sub: Any


@functools.cache
def _fields(descriptor: Any) -> tuple[_Field, ...]:
    return tuple(_field(fd) for fd in descriptor.fields)


@functools.cache
def _fields_by_name(descriptor: Any) -> dict[str, _Field]:
    return {f.name: f for f in _fields(descriptor)}


def _field(fd: Any) -> _Field:
    mt, et = fd.message_type, fd.enum_type
    if mt is not None and mt.GetOptions().map_entry:
        inner = mt.fields_by_name["value"].message_type
        if inner is not None:
            return _Field(fd.name, _MESSAGE_MAP, False, inner)
        return _Field(fd.name, _MAP, False, None)
    if fd.is_repeated:
        if mt is not None:
            return _Field(fd.name, _MESSAGE_LIST, False, mt)
        if et is not None:
            return _Field(fd.name, _ENUM_LIST, False, et)
        return _Field(fd.name, _LIST, False, None)
    if mt is not None:
        return _Field(fd.name, _MESSAGE, True, mt)
    if et is not None:
        return _Field(fd.name, _ENUM, fd.has_presence, et)
    return _Field(fd.name, _SCALAR, fd.has_presence, None)


def _plain(f: _Field, value: Any, zeros: bool, nested: Mapping[str, Any]) -> Any:
    shape = f.shape
    if shape == _SCALAR:
        return value
    if shape == _ENUM:
        return _enum_value(f.sub, value)
    if shape == _MAP:
        return dict(value)
    if shape == _LIST:
        return list(value)
    if shape == _ENUM_LIST:
        return [_enum_value(f.sub, v) for v in value]
    cls = nested.get(f.name)
    if shape == _MESSAGE:
        return message_values(value, cls, zeros=zeros)
    if shape == _MESSAGE_LIST:
        return [message_values(v, cls, zeros=zeros) for v in value]
    return {k: message_values(v, cls, zeros=zeros) for k, v in value.items()}


def _message_value(f: _Field, value: Any) -> Any:
    shape = f.shape
    if shape == _SCALAR:
        return value
    if shape == _ENUM:
        return _enum_name(f.sub, value)
    if shape == _MAP:
        return dict(value)
    if shape == _LIST:
        return list(value)
    if shape == _ENUM_LIST:
        return [_enum_name(f.sub, v) for v in value]
    if shape == _MESSAGE:
        return _nested(f.sub, value)
    if shape == _MESSAGE_LIST:
        return [_nested(f.sub, v) for v in value]
    return {k: _nested(f.sub, v) for k, v in value.items()}


def _nested(descriptor: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclass_values(value, descriptor)
    return value  # a message already, or plain data the constructor takes


@functools.cache
def _enum_prefix(descriptor: Any) -> str:
    """REPLICA_STATE_ for REPLICA_STATE_UNSPECIFIED, REPLICA_STATE_READY, ...: the words all
    the value names start with."""
    names = [v.name.split("_") for v in descriptor.values]
    words = 0
    while all(len(n) > words + 1 and n[words] == names[0][words] for n in names):
        words += 1
    return "".join(w + "_" for w in names[0][:words])


def _enum_value(descriptor: Any, number: int) -> str:
    found = descriptor.values_by_number.get(number)
    name = str(found.name if found is not None else descriptor.values[0].name)
    return name[len(_enum_prefix(descriptor)) :].lower()


def _enum_name(descriptor: Any, value: Any) -> str:
    text = value.value if isinstance(value, enum.Enum) else value
    return _enum_prefix(descriptor) + str(text).upper()
