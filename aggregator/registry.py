"""Trees, branches and leaves: the job of the BranchKey dashboard, plus authenticating a leaf."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from aggregator.analytics import OPERATIONS
from aggregator.branch_rows import BranchRows
from aggregator.db import Aggregation, Branch, Leaf, Tree
from aggregator.errors import BadRequest, Conflict, NotFound, Unauthorized
from aggregator.layer_checks import UnreadableLayers, declared_layers
from aggregator.security import hash_token, new_token, token_matches
from aggregator.statuses import RunStatus


@dataclass(frozen=True)
class LeafIdentity:
    id: str
    name: str
    branch_id: str
    tree_id: str
    owner_id: str


@dataclass(frozen=True)
class LeafCredentials:
    """The six fields of `branchkey.Credentials`; the token exists only here, never in the database."""

    id: str
    name: str
    session_token: str
    tree_id: str
    branch_id: str
    owner_id: str


class Registry:
    def __init__(self, sessions: sessionmaker, branches: BranchRows | None = None) -> None:
        self._sessions = sessions
        self.branches = branches if branches is not None else BranchRows(sessions)
        # A leaf's token hash and identity never change once created (no rotation, no deletion: add the
        # invalidation here if either ever exists), so each is read once; authenticating then costs a hash
        # and a compare instead of a query per request. Only leaves that exist are kept.
        self._known_leaves: dict[str, tuple[str, LeafIdentity]] = {}

    def create_branch(
        self,
        *,
        tree: str,
        branch: str,
        leaves: int,
        target: int | None = None,
        leaf_names: list[str] | None = None,
        analytics_ops: dict[str, str] | None = None,
        analytics_default_op: str | None = None,
        model_config: dict | None = None,
        round_timeout_s: float | None = None,
        min_leaves: int | None = None,
        max_weight_share: float | None = None,
    ) -> tuple[str, str, list[LeafCredentials]]:
        target = leaves if target is None else target
        if round_timeout_s is not None and round_timeout_s <= 0:
            raise BadRequest(f"round timeout must be greater than 0 seconds, got {round_timeout_s}")
        if min_leaves is not None and not 1 <= min_leaves <= target:
            raise BadRequest(f"min leaves must be between 1 and the target ({target}), got {min_leaves}")
        if max_weight_share is not None and not 0 < max_weight_share < 1:
            raise BadRequest(f"expected max_weight_share between 0 and 1, got {max_weight_share} (fix: leave it "
                             "out to let any leaf hold any share)")
        if leaves < 1:
            raise BadRequest(f"leaves must be at least 1, got {leaves}")
        if not 1 <= target <= leaves:
            raise BadRequest(f"target must be between 1 and the number of leaves ({leaves}), got {target}")
        names = leaf_names or default_leaf_names(branch, leaves)
        if len(names) != leaves or len(set(names)) != leaves:
            raise BadRequest("leaf names must be unique, one per leaf")
        try:
            declared_layers(model_config or {})
        except UnreadableLayers as exc:
            raise BadRequest(str(exc)) from exc
        for operation in [analytics_default_op, *(analytics_ops or {}).values()]:
            if operation is not None and operation not in OPERATIONS:
                raise BadRequest(f"unknown analytics operation '{operation}'; expected one of {', '.join(OPERATIONS)}")
        with self._sessions() as session:
            tree_row = session.scalar(select(Tree).where(Tree.name == tree))
            if tree_row is None:
                tree_row = Tree(id=str(uuid.uuid4()), name=tree, owner_id=str(uuid.uuid4()))
                session.add(tree_row)
                session.flush()
            duplicate = session.scalar(select(Branch.id).where(Branch.tree_id == tree_row.id, Branch.name == branch))
            if duplicate is not None:
                raise Conflict(f"branch '{branch}' already exists in tree '{tree}'")
            branch_row = Branch(
                id=str(uuid.uuid4()),
                tree_id=tree_row.id,
                name=branch,
                aggregation_target=target,
                run_status=RunStatus.START,
                run_number=1,
                analytics_ops=analytics_ops or {},
                analytics_default_op=analytics_default_op,
                model_config_json=model_config or {},
                round_timeout_s=round_timeout_s,
                min_leaves=min_leaves,
                max_weight_share=max_weight_share,
            )
            session.add(branch_row)
            session.flush()
            session.add(Aggregation(id=uuid.uuid4().hex, branch_id=branch_row.id, round=1))
            credentials = []
            for name in names:
                token = new_token()
                leaf = Leaf(
                    id=str(uuid.uuid4()),
                    branch_id=branch_row.id,
                    tree_id=tree_row.id,
                    owner_id=tree_row.owner_id,
                    name=name,
                    token_hash=hash_token(token),
                )
                session.add(leaf)
                credentials.append(
                    LeafCredentials(leaf.id, name, token, tree_row.id, branch_row.id, tree_row.owner_id)
                )
            session.commit()
        return tree_row.id, branch_row.id, credentials

    def authenticate(self, authorization: str | None) -> LeafIdentity:
        leaf_id, token = _bearer_credentials(authorization)
        known = self._known_leaves.get(leaf_id)
        if known is None:
            known = self._read_leaf(leaf_id)
        return _checked(token, known)

    def authenticate_known(self, authorization: str | None) -> LeafIdentity | None:
        """`authenticate` without touching the database: None when the leaf has not been read yet (the
        caller then uses `authenticate` off the event loop). Errors as `authenticate`'s."""
        leaf_id, token = _bearer_credentials(authorization)
        known = self._known_leaves.get(leaf_id)
        return None if known is None else _checked(token, known)

    def _read_leaf(self, leaf_id: str) -> tuple[str, LeafIdentity] | None:
        with self._sessions() as session:
            leaf = session.get(Leaf, leaf_id)
        if leaf is None:
            return None
        known = (leaf.token_hash, LeafIdentity(leaf.id, leaf.name, leaf.branch_id, leaf.tree_id, leaf.owner_id))
        self._known_leaves[leaf.id] = known
        return known

    def branch(self, branch_id: str) -> Branch:
        row = self.branches.get(branch_id)
        if row is None:
            raise NotFound(f"branch {branch_id} not found")
        return row

    def set_run_status(self, branch_id: str, status: str) -> Branch:
        if status not in tuple(RunStatus):
            raise BadRequest(f"run status must be one of {', '.join(RunStatus)}, got '{status}'")
        with self._sessions() as session:
            row = session.get(Branch, branch_id)
            if row is None:
                raise NotFound(f"branch {branch_id} not found")
            if status == RunStatus.START and row.run_status == RunStatus.STOP:
                row.run_number += 1
            row.run_status = status
            session.commit()
        self.branches.changed(row)
        return row

    def leaves(self, branch_id: str) -> list[Leaf]:
        with self._sessions() as session:
            return list(session.scalars(select(Leaf).where(Leaf.branch_id == branch_id).order_by(Leaf.name)))


def _bearer_credentials(authorization: str | None) -> tuple[str, str]:
    """(leaf id, session token) from `Bearer <leaf_id>:<session_token>`; the id cut to 64 characters."""
    if not authorization:
        raise Unauthorized("missing credentials")
    scheme, _, value = authorization.partition(" ")
    leaf_id, separator, token = value.strip().partition(":")
    if scheme.lower() != "bearer" or not separator or not leaf_id or not token:
        raise Unauthorized("malformed credentials")
    return leaf_id[:64], token


def _checked(token: str, known: tuple[str, LeafIdentity] | None) -> LeafIdentity:
    # Hash a dummy when the leaf is unknown, so both failures take the same time.
    stored, identity = known if known is not None else (hash_token(""), None)
    if not token_matches(token, stored) or identity is None:
        raise Unauthorized("invalid credentials")
    return identity


def default_leaf_names(branch: str, leaves: int) -> list[str]:
    """The names a branch's leaves get when none are given: <branch>-leaf-1, <branch>-leaf-2, ..."""
    return [f"{branch}-leaf-{i + 1}" for i in range(leaves)]
