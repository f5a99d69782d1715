"""The processor registry: short names in YAML → factories with typed params.

Three ways in, one lookup:

* voicebot's own processors and service providers register at import of
  :mod:`voicebot.processors` (``vad``, ``stt``, ``llm``, ``tts``, ``echo``, …);
* users decorate a ``FrameProcessor`` subclass with :func:`processor`, or publish it under the
  entry-point group ``voicebot.processors`` (``name = "package.module:Class"``);
* a YAML entry may name any class directly as ``package.module:Class``.

A processor's params come from a pydantic model (unknown keys rejected). For decorated classes the
model is derived from ``__init__``'s signature unless one is given.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

from pipecat.processors.frame_processor import FrameProcessor
from pydantic import BaseModel, ConfigDict, create_model

from voicebot.build.context import BuildContext, Built
from voicebot.build.kinds import FrameKind
from voicebot.services.resources import SharedResources

#: What a factory returns: one processor, several in order, or a :class:`Built`.
FactoryResult = FrameProcessor | Sequence[FrameProcessor] | Built
Factory = Callable[[Any, BuildContext], FactoryResult]

ENTRY_POINT_GROUP = "voicebot.processors"
#: Provider name of processors that have only one implementation.
DEFAULT = "default"

P = TypeVar("P", bound=type[FrameProcessor])


#: Loads what a provider shares between calls (models, clients) before the first call needs it.
Warm = Callable[[Any, SharedResources], None]


@dataclass(frozen=True)
class Provider:
    """One implementation of a processor, e.g. ``stt`` by ``azure``, ``local`` or ``fake``."""

    name: str
    params: type[BaseModel]
    factory: Factory
    description: str = ""
    warm: Warm | None = None
    """Called once per process at start-up, off the event loop, so the first call is not the one
    that waits for models to load."""
    input_rates: tuple[int, ...] | None = None
    """The pipeline input rates (``audio.in_rate``) it works at; None: any."""


@dataclass
class ProcessorSpec:
    """A named processor: the kinds it consumes and emits, and its providers.

    ``consumes``/``emits`` of None mean "not declared": ``validate`` cannot check neighbours of
    such a processor and says so. ``swallows`` lists consumed kinds that do not continue
    downstream (a TTS turns ``text`` into ``audio_out``; the text stops there).
    """

    name: str
    consumes: frozenset[FrameKind] | None
    emits: frozenset[FrameKind] | None
    providers: dict[str, Provider] = field(default_factory=dict)
    default_provider: str | None = None
    swallows: frozenset[FrameKind] = frozenset()
    description: str = ""
    origin: str = "voicebot"

    @property
    def needs_provider_key(self) -> bool:
        """Whether YAML params carry a ``provider:`` key choosing the implementation."""
        return not (len(self.providers) == 1 and DEFAULT in self.providers)


class Registry:
    """Processor specs by name; see the module docstring for how names get here."""

    def __init__(self) -> None:
        self._specs: dict[str, ProcessorSpec] = {}
        self._entry_points_loaded = False

    def add(self, spec: ProcessorSpec) -> ProcessorSpec:
        """Register ``spec``; a second registration under the same name replaces the first."""
        self._specs[spec.name] = spec
        return spec

    def add_provider(self, processor: str, provider: Provider) -> None:
        """Add an implementation to an already registered processor (e.g. a new STT vendor)."""
        self._specs[processor].providers[provider.name] = provider

    def names(self) -> list[str]:
        """Registered short names, sorted."""
        self._load_entry_points()
        return sorted(self._specs)

    def get(self, name: str) -> ProcessorSpec:
        """The spec for a short name or ``module:Class``; raises LookupError with a hint."""
        if name in self._specs:
            return self._specs[name]
        if ":" in name:
            return self._spec_for_import(name)
        self._load_entry_points()
        if name in self._specs:
            return self._specs[name]
        close = difflib.get_close_matches(name, self._specs, n=3)
        hint = f"did you mean {', '.join(close)}?" if close else ""
        known = ", ".join(sorted(self._specs))
        raise LookupError(
            f"unknown processor {name!r}",
            (hint + " " if hint else "")
            + f"known processors: {known}; or name a class as package.module:Class",
        )

    def _spec_for_import(self, ref: str) -> ProcessorSpec:
        module_name, _, attr = ref.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise LookupError(
                f"cannot import module {module_name!r}: {exc}",
                "check the module is installed or on PYTHONPATH",
            ) from exc
        target = getattr(module, attr, None)
        if not (inspect.isclass(target) and issubclass(target, FrameProcessor)):
            raise LookupError(
                f"{ref!r} is not a FrameProcessor class",
                f"name a FrameProcessor subclass defined in {module_name}",
            )
        spec: ProcessorSpec | None = getattr(target, "__voicebot_spec__", None)
        if spec is None or spec.providers[DEFAULT].factory.__qualname__ != target.__qualname__:
            spec = spec_for_class(target, name=ref)
        return spec

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in self._specs:
                continue
            target = ep.load()
            spec = getattr(target, "__voicebot_spec__", None) or spec_for_class(target, ep.name)
            spec.name = ep.name
            spec.origin = f"entry point {ep.value}"
            self._specs[ep.name] = spec


_default = Registry()


def default_registry() -> Registry:
    """The process-wide registry that YAML files are built with unless another is given."""
    import voicebot.processors  # noqa: F401  (registers voicebot's own processors)

    return _default


def params_from_signature(cls: type) -> type[BaseModel]:
    """A pydantic model of the keyword parameters of ``cls``'s own ``__init__``.

    Only an ``__init__`` written outside pipecat counts (pipecat's base-class arguments such as
    ``name`` or ``metrics`` are not pipeline config); ``*args``/``**kwargs`` are left out.
    Unknown keys are rejected.
    """
    init = next(
        (
            klass.__dict__["__init__"]
            for klass in cls.__mro__
            if "__init__" in klass.__dict__ and not klass.__module__.startswith("pipecat")
        ),
        None,
    )
    fields: dict[str, Any] = {}
    if init is not None and init is not object.__init__:
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # an annotation that cannot be resolved is taken as Any
            hints = {}
        for pname, param in inspect.signature(init).parameters.items():
            if pname == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                continue
            default = ... if param.default is param.empty else param.default
            fields[pname] = (hints.get(pname, Any), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model: type[BaseModel] = create_model(f"{cls.__name__}Params", __config__=config, **fields)
    return model


def _kinds(values: Iterable[FrameKind | str] | None) -> frozenset[FrameKind] | None:
    return None if values is None else frozenset(FrameKind(v) for v in values)


def spec_for_class(
    cls: type[FrameProcessor],
    name: str,
    *,
    consumes: Iterable[FrameKind | str] | None = None,
    emits: Iterable[FrameKind | str] | None = None,
    swallows: Iterable[FrameKind | str] = (),
    params: type[BaseModel] | None = None,
    description: str = "",
) -> ProcessorSpec:
    """A spec for a plain ``FrameProcessor`` class whose params are its constructor arguments.

    ``consumes``/``emits`` default to the class attributes of the same names, if any.
    """
    model = params or params_from_signature(cls)

    def factory(values: BaseModel, context: BuildContext) -> FactoryResult:
        return cls(**dict(values))

    factory.__qualname__ = cls.__qualname__
    doc = description or (inspect.getdoc(cls) or "").split("\n")[0]
    return ProcessorSpec(
        name=name,
        consumes=_kinds(consumes if consumes is not None else getattr(cls, "consumes", None)),
        emits=_kinds(emits if emits is not None else getattr(cls, "emits", None)),
        swallows=_kinds(swallows) or frozenset(),
        providers={DEFAULT: Provider(DEFAULT, model, factory, doc)},
        description=doc,
        origin=f"{cls.__module__}:{cls.__qualname__}",
    )


def processor(
    name: str | None = None,
    *,
    consumes: Iterable[FrameKind | str],
    emits: Iterable[FrameKind | str],
    swallows: Iterable[FrameKind | str] = (),
    params: type[BaseModel] | None = None,
    registry: Registry | None = None,
) -> Callable[[P], P]:
    """Register a ``FrameProcessor`` subclass under a short name for use in pipeline YAML.

    ::

        @processor("redactor", consumes=["transcript"], emits=["transcript"])
        class PIIRedactor(FrameProcessor):
            def __init__(self, mask: str = "*", **kwargs): ...

    The YAML entry ``- redactor: {mask: "#"}`` then builds ``PIIRedactor(mask="#")`` per call.
    """

    def register(cls: P) -> P:
        spec = spec_for_class(
            cls,
            name or cls.__name__,
            consumes=consumes,
            emits=emits,
            swallows=swallows,
            params=params,
        )
        cls.__voicebot_spec__ = spec  # type: ignore[attr-defined]
        (registry or _default).add(spec)
        return cls

    return register


def service(
    name: str,
    *,
    consumes: Iterable[FrameKind | str],
    emits: Iterable[FrameKind | str],
    swallows: Iterable[FrameKind | str] = (),
    default_provider: str | None = None,
    description: str = "",
    registry: Registry | None = None,
) -> ProcessorSpec:
    """Register a processor with several providers (``stt``, ``tts``, …); add them with
    :func:`provider`."""
    return (registry or _default).add(
        ProcessorSpec(
            name=name,
            consumes=_kinds(consumes),
            emits=_kinds(emits),
            swallows=_kinds(swallows) or frozenset(),
            default_provider=default_provider,
            description=description,
        )
    )


def provider(
    processor_name: str,
    provider_name: str,
    params: type[BaseModel],
    *,
    warm: Warm | None = None,
    input_rates: tuple[int, ...] | None = None,
    registry: Registry | None = None,
) -> Callable[[Factory], Factory]:
    """Decorate ``factory(params, context)`` as one provider of a registered service.

    ``warm(params, resources)``, if given, loads the provider's shared resources at start-up.
    ``input_rates``, if given, are the only ``audio.in_rate`` values it works at; ``validate``
    reports a pipeline that sets another.
    """

    def register(factory: Factory) -> Factory:
        doc = (inspect.getdoc(factory) or "").split("\n")[0]
        (registry or _default).add_provider(
            processor_name, Provider(provider_name, params, factory, doc, warm, input_rates)
        )
        return factory

    return register


def as_built(result: FactoryResult) -> Built:
    """Normalise what a factory returned."""
    if isinstance(result, Built):
        return result
    if isinstance(result, FrameProcessor):
        return Built([result])
    return Built(list(result))
