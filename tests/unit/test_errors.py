"""One exception tree: every error derives from one root, the tree drawn in runtimed.errors is
the real one, codes map to classes through one table, and an error rebuilt from an
ErrorReply keeps its message and its structured attributes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import textwrap
from types import ModuleType

import msgspec
import pytest

import blobstore
import protocol
import runtimed
import runtimed.errors as errors_module
from blobstore.errors import BlobError, BlobNotFound
from protocol.errors import ErrorCode, ErrorDetails, ProtocolError, VersionMismatch
from protocol.messages import ErrorReply, decode_daemon_message, encode
from runtimed.automation.parameters import ParameterError
from runtimed.automation.report import NotebookExecutionError
from runtimed.errors import (
    WIRE_ERRORS,
    BlobUnavailable,
    DocumentError,
    EnvBuildFailed,
    InvalidRequest,
    KernelNotFound,
    KernelStartFailed,
    RemoteError,
    RuntimedError,
    RuntimeNotFound,
    error_from_reply,
)

# Exceptions that never leave the module raising them (named in runtimed.errors' docstring).
CONTROL_FLOW = {"SlowClient", "_Truncated", "_UsageError", "_BadInput"}


def all_modules() -> list[ModuleType]:
    found = []
    for package in (protocol, blobstore, runtimed):
        found.append(package)
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            found.append(importlib.import_module(info.name))
    return found


def project_exceptions() -> dict[str, type[BaseException]]:
    classes: dict[str, type[BaseException]] = {}
    for module in all_modules():
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                classes[name] = value
    return classes


def drawn_tree() -> dict[str, tuple[str | None, str]]:
    """The tree in runtimed.errors' docstring: class name -> (drawn parent, module)."""
    doc = errors_module.__doc__ or ""
    block = doc.split("::", 1)[1].split("\n\n", 2)[1]
    parents: list[str] = []
    tree: dict[str, tuple[str | None, str]] = {}
    for line in textwrap.dedent(block).splitlines():
        match = re.match(r"^((?:[│ ]   |[├└]── )*)(\w+)(?: \[([\w.]+)\])?", line)
        assert match, line
        depth = len(match.group(1)) // 4
        name, module = match.group(2), match.group(3) or "runtimed.errors"
        del parents[depth:]
        tree[name] = (parents[-1] if parents else None, module)
        parents.append(name)
    return tree


# ---------------------------------------------------------------- one tree


def test_every_exception_the_project_defines_derives_from_the_one_root() -> None:
    strays = {
        f"{cls.__module__}.{name}"
        for name, cls in project_exceptions().items()
        if not issubclass(cls, RuntimedError) and name not in CONTROL_FLOW
    }
    assert not strays, f"not under RuntimedError: {sorted(strays)}"
    assert RuntimedError is protocol.errors.RuntimedError  # re-exported, not a second root


def test_the_tree_drawn_in_the_docstring_is_the_real_one() -> None:
    tree = drawn_tree()
    classes = project_exceptions()
    rooted = {n for n, c in classes.items() if issubclass(c, RuntimedError)}
    assert set(tree) == rooted, set(tree) ^ rooted
    for name, (parent, module) in tree.items():
        cls = classes[name]
        assert cls.__module__ == module, name
        if parent is None:
            assert cls is RuntimedError
        else:
            # The drawn parent is the first base from the project (ParameterError is also a
            # ValueError, drawn as a note).
            project_bases = [b for b in cls.__bases__ if issubclass(b, RuntimedError)]
            assert [b.__name__ for b in project_bases] == [parent], name


def test_the_subclass_relationships_callers_catch_are_kept() -> None:
    assert issubclass(ParameterError, ValueError)
    assert issubclass(ParameterError, InvalidRequest)
    assert issubclass(NotebookExecutionError, RuntimedError)
    assert issubclass(BlobNotFound, BlobError)
    assert issubclass(BlobUnavailable, BlobError)
    assert issubclass(VersionMismatch, ProtocolError)
    assert issubclass(RuntimeNotFound, KernelNotFound)
    err = ParameterError("not a valid Python identifier", name="1x")
    assert str(err) == "parameter '1x': not a valid Python identifier"
    assert err.code == ErrorCode.INVALID_REQUEST


def test_blob_errors_keep_their_codes_as_strings() -> None:
    assert BlobNotFound.code == "blob_not_found"
    assert BlobError.code == ErrorCode.BLOB_ERROR


# ---------------------------------------------------------------- codes are data


def test_the_wire_table_has_exactly_one_class_per_code() -> None:
    codes = [cls.code for cls in WIRE_ERRORS]
    assert len(codes) == len(set(codes)), "two classes claim one code"
    assert set(codes) == set(ErrorCode), set(ErrorCode) - set(codes)


def test_the_table_is_built_once_not_walked_per_call() -> None:
    source = inspect.getsource(error_from_reply)
    assert "__subclasses__" not in source
    assert "_register" not in vars(errors_module)


@pytest.mark.parametrize("cls", WIRE_ERRORS, ids=lambda c: c.__name__)
def test_every_code_comes_back_as_its_class_with_its_message(cls: type[RuntimedError]) -> None:
    reply = ErrorReply(id=1, code=cls.code, message=f"what went wrong ({cls.__name__})")
    received = decode_daemon_message(encode(reply))
    assert isinstance(received, ErrorReply)
    err = error_from_reply(received.code, received.message, received.details)
    assert type(err) is cls
    assert str(err) == f"what went wrong ({cls.__name__})"
    assert err.code == cls.code
    assert err.remote_code == cls.code.value


def test_an_unknown_code_is_a_remote_error_keeping_the_code() -> None:
    err = error_from_reply("added_later", "m", ErrorDetails(name="x"))
    assert type(err) is RemoteError
    assert err.remote_code == "added_later"
    assert err.code == ErrorCode.INTERNAL_ERROR
    assert str(err) == "m"


def test_document_errors_come_back_as_document_errors() -> None:
    from runtimed.documents.boundary import DocumentError as FromBoundary

    assert FromBoundary is DocumentError
    err = error_from_reply(ErrorCode.DOCUMENT_ERROR, "applying a sync message: panicked")
    assert isinstance(err, DocumentError)


# ---------------------------------------------------------------- structured attributes


def over_the_wire(exc: RuntimedError) -> RuntimedError:
    """What a client raises for ``exc`` raised by a daemon handler (as the connection
    serves it: ErrorReply with the code, the message and the details, encoded, decoded)."""
    reply = ErrorReply(id=9, code=exc.code, message=str(exc), details=exc.wire_details())
    received = decode_daemon_message(encode(reply))
    assert isinstance(received, ErrorReply)
    return error_from_reply(received.code, received.message, received.details)


def test_kernel_not_found_keeps_name_and_available() -> None:
    original = KernelNotFound("python9", ["python3", "ir"])
    rebuilt = over_the_wire(original)
    assert isinstance(rebuilt, KernelNotFound)
    assert type(rebuilt) is KernelNotFound
    assert rebuilt.name == "python9"
    assert rebuilt.available == ["ir", "python3"]
    assert str(rebuilt) == str(original)


def test_runtime_not_found_keeps_name_and_available_in_order() -> None:
    original = RuntimeNotFound("py-9", ["python3", "env-abc", "deno"])
    rebuilt = over_the_wire(original)
    assert type(rebuilt) is RuntimeNotFound
    assert isinstance(rebuilt, RuntimeNotFound)
    assert rebuilt.name == "py-9"
    assert rebuilt.available == ["python3", "env-abc", "deno"]
    assert str(rebuilt) == str(original)
    assert "see `runt runtimes`" in str(rebuilt)


def test_kernel_start_failed_keeps_reason_and_stderr_tail() -> None:
    original = KernelStartFailed(
        "kernel exited with code 1 before it was ready", stderr_tail="ImportError: no zmq\n"
    )
    rebuilt = over_the_wire(original)
    assert isinstance(rebuilt, KernelStartFailed)
    assert rebuilt.reason == "kernel exited with code 1 before it was ready"
    assert rebuilt.stderr_tail == "ImportError: no zmq\n"
    assert str(rebuilt) == str(original)
    assert "--- kernel stderr (tail) ---" in str(rebuilt)


def test_env_build_failed_keeps_package_reason_and_output_tail() -> None:
    original = EnvBuildFailed(
        "could not build an environment for ['nosuchpkg']",
        package="nosuchpkg",
        output_tail="No solution found when resolving dependencies",
    )
    rebuilt = over_the_wire(original)
    assert isinstance(rebuilt, EnvBuildFailed)
    assert rebuilt.package == "nosuchpkg"
    assert rebuilt.reason == "could not build an environment for ['nosuchpkg']"
    assert rebuilt.output_tail == "No solution found when resolving dependencies"
    assert str(rebuilt) == str(original)


def test_every_class_with_attributes_carries_them() -> None:
    # A class whose __init__ takes more than a message has attributes: it must say them on
    # the wire (wire_details) and rebuild from them (_rebuild), or a client loses them.
    for cls in WIRE_ERRORS:
        params = list(inspect.signature(cls.__init__).parameters)[1:]
        if params in (["args", "kwargs"], []):
            continue
        assert cls.wire_details is not RuntimedError.wire_details, cls.__name__
        assert "_rebuild" in vars(cls) or any(
            "_rebuild" in vars(base) for base in cls.__mro__[1:] if base is not RuntimedError
        ), cls.__name__


@pytest.mark.parametrize(
    ("cls", "attributes"),
    [
        (KernelNotFound, {"name": "", "available": []}),
        (RuntimeNotFound, {"name": "", "available": []}),
        (KernelStartFailed, {"reason": "m", "stderr_tail": ""}),
        (EnvBuildFailed, {"reason": "m", "package": None, "output_tail": ""}),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_an_older_daemon_without_details_still_gives_every_attribute(
    cls: type[RuntimedError], attributes: dict[str, object]
) -> None:
    # An ErrorReply from before `details` existed: the field is absent from the map.
    wire = msgspec.msgpack.encode(
        {"type": "error_reply", "id": 2, "code": cls.code, "message": "m"}
    )
    received = decode_daemon_message(wire)
    assert isinstance(received, ErrorReply)
    assert received.details is None
    err = error_from_reply(received.code, received.message, received.details)
    assert type(err) is cls
    assert str(err) == "m"
    for name, value in attributes.items():
        assert getattr(err, name) == value, name


def test_details_from_a_newer_daemon_with_unknown_fields_still_decode() -> None:
    wire = msgspec.msgpack.encode(
        {
            "type": "error_reply",
            "id": 3,
            "code": "kernel_start_failed",
            "message": "boom",
            "details": {"reason": "boom", "stderr_tail": "t", "added_later": [1, 2]},
        }
    )
    received = decode_daemon_message(wire)
    assert isinstance(received, ErrorReply)
    err = error_from_reply(received.code, received.message, received.details)
    assert isinstance(err, KernelStartFailed)
    assert err.stderr_tail == "t"


def test_errors_without_attributes_send_no_details() -> None:
    assert InvalidRequest("x").wire_details() is None
    assert (
        msgspec.msgpack.decode(encode(ErrorReply(id=1, code="c", message="m")))["details"] is None
    )
