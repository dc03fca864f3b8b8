//! The slice of a policy set that can apply to a request: each policy
//! indexed by the actions its scope includes and the entities its
//! principal and resource scopes are tied to, and the context attributes
//! it may read.

use std::collections::HashMap;
use std::sync::Arc;

use cedar_policy::{
    ActionConstraint, Entities, EntityUid, Policy, PolicySet, PrincipalConstraint,
    ResourceConstraint, Schema,
};

use super::model::Types;
use super::request::Action;

#[derive(Debug, Clone)]
pub(super) struct Indexed {
    pub(super) policy: Policy,
    pub(super) principal: Option<EntityUid>,
    pub(super) resource: Option<EntityUid>,
    pub(super) reads: Reads,
}

/// A slice of the policies and the entities of one kind of request.
pub(super) struct Prepared {
    pub(super) policies: Arc<PolicySet>,
    pub(super) entities: Arc<Entities>,
    /// The context attributes a policy of the slice may read.
    pub(super) reads: Reads,
}

/// Which context attributes a policy may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Reads {
    pub(super) arguments: bool,
    pub(super) transport: bool,
    pub(super) protocol: bool,
    pub(super) session: bool,
    pub(super) time: bool,
    pub(super) scopes: bool,
    pub(super) script: bool,
    pub(super) answer: bool,
    pub(super) flow: bool,
}

impl Reads {
    pub(super) const ALL: Self = Self {
        arguments: true,
        transport: true,
        protocol: true,
        session: true,
        time: true,
        scopes: true,
        script: true,
        answer: true,
        flow: true,
    };
    pub(super) const NONE: Self = Self {
        arguments: false,
        transport: false,
        protocol: false,
        session: false,
        time: false,
        scopes: false,
        script: false,
        answer: false,
        flow: false,
    };

    /// From a policy's source: an attribute is read if the policy names it
    /// as an identifier (`context.x`, `context has x`), and all are if it
    /// reaches the context any other way — as a whole value, or through a
    /// string (`context["x"]`, `context has "x"`), where escapes could spell
    /// a name the text does not show. Over-approximates, never under.
    pub(super) fn of(source: &str) -> Self {
        let mut rest = source;
        while let Some(found) = rest.find("context") {
            let after = rest[found + "context".len()..].trim_start();
            let by_identifier = after.starts_with('.')
                || after
                    .strip_prefix("has")
                    .is_some_and(|name| !name.trim_start().starts_with('"'));
            if !by_identifier {
                return Self::ALL;
            }
            rest = &rest[found + "context".len()..];
        }
        Self {
            arguments: source.contains("arguments"),
            transport: source.contains("transport"),
            protocol: source.contains("protocol"),
            session: source.contains("session"),
            time: source.contains("time"),
            scopes: source.contains("scopes"),
            script: source.contains("script"),
            answer: source.contains("answer"),
            flow: source.contains("flow"),
        }
    }

    pub(super) fn union(self, other: Self) -> Self {
        Self {
            arguments: self.arguments || other.arguments,
            transport: self.transport || other.transport,
            protocol: self.protocol || other.protocol,
            session: self.session || other.session,
            time: self.time || other.time,
            scopes: self.scopes || other.scopes,
            script: self.script || other.script,
            answer: self.answer || other.answer,
            flow: self.flow || other.flow,
        }
    }
}

/// Indexes each policy under the actions its action scope includes, with
/// the entity its principal and resource scopes are tied to (if any).
pub(super) fn index_by_action(
    policies: &[Policy],
    schema: &Schema,
    types: &Types,
) -> HashMap<Action, Vec<Indexed>> {
    let action_entities = schema.action_entities().ok();
    let covers = |scope: &EntityUid, action: &EntityUid| {
        scope == action
            || action_entities
                .as_ref()
                .is_some_and(|entities| entities.is_ancestor_of(scope, action))
    };
    let mut by_action: HashMap<Action, Vec<Indexed>> = HashMap::new();
    for policy in policies {
        let principal = match policy.principal_constraint() {
            PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
            PrincipalConstraint::In(uid)
            | PrincipalConstraint::Eq(uid)
            | PrincipalConstraint::IsIn(_, uid) => Some(uid),
        };
        let resource = match policy.resource_constraint() {
            ResourceConstraint::Any | ResourceConstraint::Is(_) => None,
            ResourceConstraint::In(uid)
            | ResourceConstraint::Eq(uid)
            | ResourceConstraint::IsIn(_, uid) => Some(uid),
        };
        let constraint = policy.action_constraint();
        let reads = Reads::of(&policy.to_string());
        for (action, uid) in &types.actions {
            let applies = match &constraint {
                ActionConstraint::Any => true,
                ActionConstraint::Eq(scope) => covers(scope, uid),
                ActionConstraint::In(scopes) => scopes.iter().any(|scope| covers(scope, uid)),
            };
            if applies {
                by_action.entry(*action).or_default().push(Indexed {
                    policy: policy.clone(),
                    principal: principal.clone(),
                    resource: resource.clone(),
                    reads,
                });
            }
        }
    }
    by_action
}
