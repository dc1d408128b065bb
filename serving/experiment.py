"""A/B experiments in the service: which variant a user is in, and which bundle serves it.

`VariantRouter` holds one `ModelHolder` per distinct bundle the variants name: variants that name
the same bundle share one holder, and each holder hot-reloads on its own as a single-bundle service
does. A request's variant is `core.experiment.assign_variant(user_id, name, weights, salt=salt)`, the
function `python -m monitoring assign` prints and the analysis (`python -m monitoring ab`) assumes,
so serving and analysis agree on every user.

Without an experiment there is one variant, None, served by `bundle_version`.

A variant whose bundle is missing or broken is never re-routed to another bundle (that would
silently break the split the analysis checks): the service is not ready (/readyz 503 naming the
variant and why) and that variant's requests are answered 503, until its holder loads a bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from core.experiment import assign_variant
from serving.model import LoadedModel, ModelHolder
from serving.settings import ExperimentSettings


class VariantRouter:
    def __init__(self, experiment: ExperimentSettings | None, bundles: Mapping[str | None, str],
                 make_holder: Callable[[str], ModelHolder]) -> None:
        self.experiment = experiment
        self.bundles = dict(bundles)  # variant -> bundle version ("latest" or a version directory)
        self.holders = {bundle: make_holder(bundle) for bundle in dict.fromkeys(self.bundles.values())}
        self.primary_variant = experiment.control if experiment is not None else None
        self._weights = experiment.weights if experiment is not None else {}

    # -- assignment -----------------------------------------------------------------------------

    def assign(self, user_id: int) -> str | None:
        if self.experiment is None:
            return None
        return assign_variant(user_id, self.experiment.name, self._weights, salt=self.experiment.salt)

    def holder(self, variant: str | None = None) -> ModelHolder:
        """The holder serving `variant` (None: the control's, or the only one)."""
        return self.holders[self.bundle(variant)]

    def bundle(self, variant: str | None = None) -> str:
        return self.bundles[self.primary_variant if variant is None else variant]

    @property
    def primary(self) -> ModelHolder:
        """The control's holder (the only one without an experiment): item lookups, similar items."""
        return self.holder(self.primary_variant)

    def loaded_models(self) -> list[LoadedModel]:
        return [model for model in (h.current for h in self.holders.values()) if model is not None]

    def versions_in_service(self) -> set[str]:
        return {model.version for model in self.loaded_models()}

    # -- lifecycle ------------------------------------------------------------------------------

    def check(self) -> None:
        for holder in self.holders.values():
            holder.check()

    def start(self, interval_s: float) -> None:
        for holder in self.holders.values():
            holder.start(interval_s)

    def stop(self) -> None:
        for holder in self.holders.values():
            holder.stop()

    # -- state ----------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return all(holder.ready for holder in self.holders.values())

    def problems(self) -> dict[str, str]:
        """Per variant (or bundle, without an experiment) that is not loaded or failed a reload: why."""
        out = {}
        for variant, bundle in self.bundles.items():
            holder = self.holders[bundle]
            if holder.current is None or holder.last_error:
                out[variant or bundle] = holder.last_error or "loading"
        return out

    def describe(self) -> dict[str, dict[str, Any]] | None:
        """Per variant: weight, share, bundle, version in service, last reload error (None without an experiment)."""
        if self.experiment is None:
            return None
        total = sum(self._weights.values())
        out = {}
        for variant in sorted(self.experiment.variants):
            bundle = self.bundles[variant]
            holder = self.holders[bundle]
            out[variant] = {"weight": self._weights[variant], "share": self._weights[variant] / total,
                            "bundle": bundle, "version": holder.current.version if holder.current else None,
                            "loaded": holder.current is not None, "last_reload_error": holder.last_error}
        return out

    def group_by_holder(self, variants: Iterable[str | None]) -> dict[str, list[int]]:
        """Bundle -> positions of `variants` it serves (first-seen order): a batch never mixes bundles."""
        groups: dict[str, list[int]] = {}
        for position, variant in enumerate(variants):
            groups.setdefault(self.bundle(variant), []).append(position)
        return groups
