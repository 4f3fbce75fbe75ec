"""One factory for every architecture: nscfate's own models by name, everything else from timm.

Own models register themselves with :func:`register_model`; :func:`create_model` looks the name up
there first and otherwise hands it to ``timm.create_model``. Unknown names fail before anything is
built, with close matches suggested.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from typing import TypeVar

import timm
from torch import nn

from nscfate.errors import NscfateError

ModelBuilder = TypeVar("ModelBuilder", bound=Callable[..., nn.Module])

#: nscfate's own architectures: name -> class or function taking (num_classes, in_chans, **options).
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_COMMON_ARGS = {"num_classes", "in_chans"}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Class/function decorator that makes an architecture available to ``create_model(name)``.

    The builder must accept ``num_classes`` and ``in_chans`` keywords; its other keyword arguments
    are the architecture's options (what ``model.<key>=...`` overrides in Hydra).
    """

    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return decorator


def nscfate_models() -> list[str]:
    """Names of nscfate's own registered architectures, sorted."""
    return sorted(_REGISTRY)


def available_models(pattern: str = "*", include_timm: bool = True) -> list[str]:
    """Every name ``create_model`` accepts that matches the shell-style ``pattern``.

    nscfate's own models come first, then timm's (``timm.list_models(pattern)``) unless
    ``include_timm`` is false.
    """
    own = [n for n in nscfate_models() if fnmatch.fnmatchcase(n, pattern)]
    return own + (timm.list_models(pattern) if include_timm else [])


def create_model(
    name: str,
    num_classes: int = 3,
    in_chans: int = 1,
    pretrained: bool = False,
    **kwargs: object,
) -> nn.Module:
    """Build the architecture ``name`` with ``num_classes`` logits and ``in_chans`` input channels.

    ``name`` is an nscfate model (``nscnet``, ``small_cnn``) or any timm model name; extra
    ``kwargs`` go to the architecture (for timm, e.g. ``drop_rate``). ``pretrained=True`` only works
    for timm models and downloads weights from the Hugging Face hub, so it needs internet access;
    timm then adapts the first conv to ``in_chans`` and re-initialises the classifier.

    Raises NscfateError for an unknown name (with close matches), bad sizes or unknown options.
    """
    _check_positive("num_classes", num_classes)
    _check_positive("in_chans", in_chans)
    if name in _REGISTRY:
        return _create_own(name, num_classes, in_chans, pretrained, kwargs)
    if _is_timm_model(name):
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    raise NscfateError(_unknown_name_message(name))


def _create_own(
    name: str, num_classes: int, in_chans: int, pretrained: bool, options: dict[str, object]
) -> nn.Module:
    if pretrained:
        raise NscfateError(
            f"model.pretrained=true: nscfate model {name!r} has no pretrained weights"
            " (use model.pretrained=false, or a timm model with internet access)"
        )
    builder = _REGISTRY[name]
    accepted = [p for p in inspect.signature(builder).parameters if p not in _COMMON_ARGS]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise NscfateError(
            f"model {name!r} got unknown option(s) {', '.join(unknown)}:"
            f" expected some of {', '.join(accepted)}"
        )
    return builder(num_classes=num_classes, in_chans=in_chans, **options)


def _is_timm_model(name: str) -> bool:
    # Hub / local-dir names ("hf-hub:timm/resnet18.a1_in1k") are resolved by timm itself.
    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return True
    arch = name.split(".", 1)[0]  # "resnet18.a1_in1k" names a pretrained tag of resnet18
    return timm.is_model(arch)


def _unknown_name_message(name: str) -> str:
    own = nscfate_models()
    close = difflib.get_close_matches(str(name), own + timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see nscfate.models.available_models()"
    return (
        f"unknown model {name!r}: not an nscfate model ({', '.join(own)}) nor a timm model; {hint}"
    )


def _check_positive(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NscfateError(f"model.{key}={value!r}: expected a positive integer")


def classifier_of(net: nn.Module) -> nn.Module:
    """The layer that maps penultimate features to logits (``get_classifier()``, as in timm).

    Its input is what the OOD detector measures; every nscfate and timm model has one.
    """
    getter = getattr(net, "get_classifier", None)
    head = getter() if callable(getter) else None
    if not isinstance(head, nn.Module) or isinstance(head, nn.Identity):
        raise NscfateError(
            f"{type(net).__name__} has no classifier layer (get_classifier()): "
            "cannot read its penultimate features"
        )
    return head
