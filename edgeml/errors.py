"""Every error edgeml raises on purpose derives from :class:`EdgeMLError`.

The tree (add a class here, under the branch it belongs to, rather than raising a bare built-in)::

    EdgeMLError
    ├── ConfigError                 a config file, option or target profile is wrong (names file and key)
    │   └── TargetError             unknown target / invalid target profile
    ├── MissingExtraError           an optional dependency is not installed (says which extra to install)
    ├── KeyStoreError               signing keys: missing, unreadable, wrong permissions
    ├── BundleError                 a bundle cannot be trusted or used; nothing was unpacked
    │   ├── UnsupportedFormatError  format version this edgeml does not read
    │   ├── TruncatedBundleError    the archive ends early or is not an archive at all
    │   ├── UnsafeArchiveError      absolute path, '..', link, device file, oversized or unexpected member
    │   ├── SignatureError          missing signature, unknown/untrusted key, signature does not match
    │   ├── IntegrityError          a member's size or sha256 differs from the signed manifest
    │   └── ManifestError           the signed manifest itself is malformed
    ├── CompileError                the build failed (root cause in the message)
    │   ├── ModelCheckError         the model does not fit the target: carries every problem found
    │   ├── QuantizationError       a quantizer failed on this model
    │   ├── ConversionError         a converter failed on this model
    │   └── FidelityError           a candidate disagrees with the reference beyond the thresholds
    ├── ToolchainError              an isolated toolchain is missing, outdated or failed to install
    ├── RuntimeBackendError         a runtime could not load or run a model
    │   ├── BackendUnavailableError no backend on this host can run the bundle (lists every reason)
    │   ├── InferenceInputError     the caller's inputs do not match the model (name, dtype, shape)
    │   └── UnknownModelError       the agent serves no model of that name
    ├── UpdateError                 an over-the-air update was refused or failed (old model keeps serving)
    │   └── DesiredStateError       desired state malformed, untrusted, expired, replayed, other device
    └── FleetError                  talking to / running the fleet server (``status_code``: the HTTP status)
        ├── AuthError               missing, wrong, expired or under-privileged token (HTTP 401/403)
        ├── NotFoundError           no such bundle, rollout, device, token or key (HTTP 404)
        ├── ConflictError           the change clashes with the fleet's state: version exists, rollout runs (409)
        ├── InvalidRequestError     the server refused what was sent: bad field, bad bundle, too big (400/413/422)
        ├── TransientFleetError     server error (5xx) or network: retried on reads, worth retrying later
        └── RolloutError            a rollout cannot be created or changed in its current state
            ├── RolloutFailed       a rollout stopped on a failed gate or was aborted: carries every wave's figures
            └── RolloutTimeout      waiting for a rollout gave up while it still ran: carries its last status
"""

from __future__ import annotations

from collections.abc import Sequence


def _listing(headline: str, items: Sequence[str]) -> str:
    """``headline`` and one indented ``- item`` line per item: every problem at once, not just the first."""
    return headline + "".join(f"\n  - {item}" for item in items)


class EdgeMLError(Exception):
    """Root of every error edgeml raises on purpose."""


class ConfigError(EdgeMLError):
    """A configuration file, option or profile is invalid; the message names the file and key."""


class TargetError(ConfigError):
    """An unknown target id, or a target profile that does not validate."""


class MissingExtraError(EdgeMLError):
    """An optional dependency is missing. The message says which extra to install."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(
            f"'{package}' is not installed{what}. Install it with: pip install 'edgeml[{extra}]'"
        )
        self.package = package
        self.extra = extra


class KeyStoreError(EdgeMLError):
    """A signing or trusted key is missing, unreadable or malformed."""


class BundleError(EdgeMLError):
    """A bundle cannot be trusted or used. Nothing from it was unpacked or loaded."""


class UnsupportedFormatError(BundleError):
    """The bundle's format version is not one this edgeml reads."""


class TruncatedBundleError(BundleError):
    """The archive ends before it should, or is not an archive at all."""


class UnsafeArchiveError(BundleError):
    """The archive holds a member that could escape or exhaust the target directory."""


class SignatureError(BundleError):
    """The manifest signature is missing, made by an untrusted key, or does not match."""


class IntegrityError(BundleError):
    """A member's size or sha256 differs from what the signed manifest declares."""


class ManifestError(BundleError):
    """The (signed) manifest is malformed or misses required keys."""


class CompileError(EdgeMLError):
    """The build failed; the message carries the root cause."""


class ModelCheckError(CompileError):
    """The model does not fit the target. ``problems`` lists every problem found, not just the first."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        headline = f"the model does not pass the checks for this target ({len(self.problems)} problems):"
        super().__init__(_listing(headline, self.problems))


class QuantizationError(CompileError):
    """A quantizer failed on this model."""


class ConversionError(CompileError):
    """A converter failed on this model."""


class FidelityError(CompileError):
    """A candidate disagrees with the reference model beyond the build's thresholds."""


class ToolchainError(EdgeMLError):
    """An isolated toolchain (e.g. the ONNX -> TFLite converter) is missing, outdated or failed to
    install. The message names the ``edgeml toolchain install`` command to run."""


class RuntimeBackendError(EdgeMLError):
    """A runtime could not load or run a model."""


class BackendUnavailableError(RuntimeBackendError):
    """No backend on this host can run the bundle. ``reasons`` holds one line per discarded candidate."""

    def __init__(self, bundle: str, reasons: Sequence[str]) -> None:
        self.reasons = list(reasons)
        super().__init__(_listing(f"no runtime backend on this host can run {bundle}:", self.reasons))


class InferenceInputError(RuntimeBackendError):
    """The caller's inputs do not match the model's inputs (name, dtype or shape)."""


class FleetError(EdgeMLError):
    """Talking to, or running, the fleet server failed. ``status_code`` is the HTTP status when the server
    answered (None for network failures and for errors raised inside the server)."""

    status_code: int | None = None


class AuthError(FleetError):
    """A token is missing, wrong, expired, revoked or lacks the role the action needs."""


class NotFoundError(FleetError):
    """The fleet has no such bundle, rollout, device, token or key (HTTP 404)."""


class ConflictError(FleetError):
    """The change clashes with the fleet's state (HTTP 409): the version exists with other content, another
    rollout of the model runs, the rollout is not in a state that allows it. The message says what to do."""


class InvalidRequestError(FleetError):
    """The server refused the request's content (HTTP 400/413/422): its message, field by field."""


class TransientFleetError(FleetError):
    """The server failed (5xx) or could not be reached. Reads are retried with backoff before this is raised;
    trying again later may work. ``retry_after`` is the server's Retry-After header, when it sent one."""

    retry_after: str | None = None


class RolloutError(FleetError):
    """A rollout cannot be created (no device matches, another one runs) or changed in its state."""


class RolloutFailed(RolloutError):
    """A rollout stopped on a failed gate (paused or aborted) or was aborted by someone.

    ``status`` is the rollout's final status (:class:`edgeml.fleet.sdk.records.RolloutStatus`), ``waves`` its
    per-wave gate results, the failed ones with the reasons and the figures behind them."""

    def __init__(self, message: str, status: object, waves: Sequence[object]) -> None:
        super().__init__(message)
        self.status = status
        self.waves = list(waves)


class RolloutTimeout(RolloutError):
    """Waiting for a rollout gave up while it was still running (or paused by someone). ``status`` is the last
    status seen (None when the server could not be reached at all)."""

    def __init__(self, message: str, status: object) -> None:
        super().__init__(message)
        self.status = status


class UpdateError(EdgeMLError):
    """An over-the-air update was refused or failed; the running model stays as it was."""


class DesiredStateError(UpdateError):
    """A desired-state document is malformed, untrusted, expired, replayed or for another device."""


class UnknownModelError(RuntimeBackendError):
    """The agent serves no model of that name (an HTTP 404, not a failure of the agent)."""
