"""``edgeml-fleet admin init``: the first admin token, created directly in the database."""

from __future__ import annotations

from sqlalchemy import select

from edgeml.errors import AuthError
from edgeml.fleet.api.tokens import issue_token
from edgeml.fleet.store import Store
from edgeml.fleet.store.models import ApiToken, AuditEntry


def create_first_admin(db_url: str, name: str = "admin") -> str:
    """Create an admin token and return its secret; refused once any admin token exists."""
    store = Store.open(db_url)
    try:
        with store.session() as session:
            if session.scalars(select(ApiToken).where(ApiToken.role == "admin")).first() is not None:
                raise AuthError("an admin token already exists: ask an admin for a token "
                                "('edgeml-fleet tokens create NAME --role admin')")
            row, secret = issue_token(name, "admin", "admin-init")
            session.add(row)
            session.add(AuditEntry(actor="admin-init", action="token.create", target=row.id, source="local",
                                   details={"name": name, "role": "admin"}))
        return secret
    finally:
        store.close()
