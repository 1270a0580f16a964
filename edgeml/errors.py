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
    └── FleetError                  talking to / running the fleet server
        ├── AuthError               missing, wrong, expired or under-privileged token
        └── RolloutError            a rollout cannot be created or changed in its current state
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
    """Talking to, or running, the fleet server failed."""


class AuthError(FleetError):
    """A token is missing, wrong, expired, revoked or lacks the role the action needs."""


class RolloutError(FleetError):
    """A rollout cannot be created (no device matches, another one runs) or changed in its state."""


class UpdateError(EdgeMLError):
    """An over-the-air update was refused or failed; the running model stays as it was."""


class DesiredStateError(UpdateError):
    """A desired-state document is malformed, untrusted, expired, replayed or for another device."""


class UnknownModelError(RuntimeBackendError):
    """The agent serves no model of that name (an HTTP 404, not a failure of the agent)."""
