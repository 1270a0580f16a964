"""Request and response bodies of the fleet API (the OpenAPI document is generated from these)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

Role = Literal["viewer", "deployer", "admin"]
NameStr = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f]+$")]
TagStr = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:=-]+$")]
MAX_EXPIRY_S = 10 * 365 * 86400


class Health(BaseModel):
    status: str


class WhoAmI(BaseModel):
    token_id: str
    name: str
    role: str
    device_id: str | None = None


class TokenCreate(BaseModel):
    name: NameStr
    role: Role
    expires_in_s: int | None = Field(default=None, ge=1, le=MAX_EXPIRY_S, description="lifetime; none = no expiry")


class TokenOut(BaseModel):
    id: str
    name: str
    role: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    revoked_at: datetime | None
    device_id: str | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret; shown once, only its hash is kept")


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    source: str
    details: dict[str, Any]


class KeyCreate(BaseModel):
    name: NameStr
    public_pem: str = Field(min_length=1, max_length=10_000, description="Ed25519 public key, PEM")


class KeyOut(BaseModel):
    key_id: str
    name: str
    added_at: datetime | None = Field(default=None, description="when it was trusted (bundle signers)")
    role: str = Field(default="bundle-signer", description="bundle-signer (which models may run) or fleet "
                      "(signs desired states: which model runs now)")
    status: str = Field(default="active", description="active, retired (an old fleet key) or revoked")
    changed_at: str | None = Field(default=None, description="when it was retired or revoked")


class DeviceKeys(BaseModel):
    fleet: list[str] = Field(description="the current fleet key id, then retired ones")
    signers: list[str] = Field(description="bundle signer key ids")
    revoked: list[str] = Field(description="revoked bundle signer key ids")


class FleetKeyRotated(BaseModel):
    previous_key_id: str
    key_id: str
    reissued: int = Field(description="desired states re-signed with the new key (devices move over with them)")


class BundleOut(BaseModel):
    id: str = Field(description="sha256 of the bundle file")
    name: str
    version: str
    target: str
    runtime: str
    precision: str
    key_id: str
    size: int
    uploaded_at: datetime
    uploaded_by: str


class BundleDetail(BundleOut):
    manifest: dict[str, Any]
    fidelity: dict[str, Any] | None
    benchmark: dict[str, Any] | None
    in_use_by_rollouts: list[str]


class EnrollTokenCreate(BaseModel):
    group: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    tags: list[TagStr] = Field(default_factory=list, max_length=50)
    expires_in_s: int = Field(default=3600, ge=60, le=30 * 86400)

    def clean_tags(self) -> list[str]:
        return sorted(set(self.tags))


class EnrollTokenCreated(BaseModel):
    id: str
    token: str
    group: str | None
    tags: list[str]
    expires_at: datetime


class EnrollRequest(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    hardware: dict[str, Any] = Field(default_factory=dict, description="the agent's host probe")
    installed: dict[str, Any] = Field(default_factory=dict, description="installed bundles/runtimes and versions")


class MqttCredentials(BaseModel):
    host: str
    port: int
    tls: bool
    username: str
    password: str
    topic_prefix: str


class EnrollResponse(BaseModel):
    device_id: str
    api_token: str
    mqtt: MqttCredentials
    desired_key_pem: str = Field(description="the fleet's desired-state public key (PEM): trust it on the device")
    trusted_keys: list[str] = Field(description="the public keys (PEM) the fleet's bundles are signed with")


class DeviceOut(BaseModel):
    id: str
    name: str
    group: str | None
    tags: list[str]
    hardware: dict[str, Any]
    installed: dict[str, Any]
    enrolled_at: datetime
    last_seen: datetime | None
    online: bool
    revoked: bool


class DevicePatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    group: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.-]*$",
                              description="empty string removes the device from its group")
    add_tags: list[TagStr] = Field(default_factory=list, max_length=50)
    remove_tags: list[TagStr] = Field(default_factory=list, max_length=50)


class Heartbeat(BaseModel):
    hardware: dict[str, Any] | None = None
    installed: dict[str, Any] | None = None


class MosquittoFiles(BaseModel):
    password_file: str
    acl_file: str
    config: str
