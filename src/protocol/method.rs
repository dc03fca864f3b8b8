//! MCP methods, parsed once where a message enters, and what the proxy
//! knows of each: the one place their names are spelled.
//!
//! A method the proxy does not know is kept as sent ([`Method::Other`]), to
//! be forwarded, recorded, matched by plugin patterns and named in errors
//! exactly as the peer wrote it: `Method::parse(s).as_str() == s` for every
//! `s`.

use std::sync::Arc;

use serde_json::Value;

/// Declares the known methods once: the enum, the parse and the name.
macro_rules! methods {
    ($($(#[$doc:meta])* $variant:ident => $name:literal,)*) => {
        /// An MCP method.
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Method {
            $($(#[$doc])* $variant,)*
            /// A name no known method has, exactly as sent.
            Other(Unknown),
        }

        impl Method {
            /// Every known method, in declaration order.
            pub const KNOWN: &[Method] = &[$(Method::$variant,)*];

            /// The method named `name` (exact and case-sensitive; never
            /// fails: an unknown name is [`Method::Other`]).
            pub fn parse(name: &str) -> Self {
                match name {
                    $($name => Self::$variant,)*
                    other => Self::Other(Unknown(Arc::from(other))),
                }
            }

            /// The method's name on the wire.
            pub fn as_str(&self) -> &str {
                match self {
                    $(Self::$variant => $name,)*
                    Self::Other(unknown) => &unknown.0,
                }
            }

            /// The name of a known method (`None`: [`Method::Other`]).
            pub fn known_name(&self) -> Option<&'static str> {
                match self {
                    $(Self::$variant => Some($name),)*
                    Self::Other(_) => None,
                }
            }
        }
    };
}

methods! {
    // Lifecycle and utilities.
    Initialize => "initialize",
    Ping => "ping",
    /// 2026-07-28.
    ServerDiscover => "server/discover",
    LoggingSetLevel => "logging/setLevel",
    CompletionComplete => "completion/complete",
    /// 2026-07-28.
    SubscriptionsListen => "subscriptions/listen",
    // The lists, and the requests on their items.
    ToolsList => "tools/list",
    ToolsCall => "tools/call",
    PromptsList => "prompts/list",
    PromptsGet => "prompts/get",
    ResourcesList => "resources/list",
    ResourceTemplatesList => "resources/templates/list",
    ResourcesRead => "resources/read",
    ResourcesSubscribe => "resources/subscribe",
    ResourcesUnsubscribe => "resources/unsubscribe",
    // The tasks extension (2026-07-28, `io.modelcontextprotocol/tasks`).
    TasksGet => "tasks/get",
    TasksUpdate => "tasks/update",
    TasksCancel => "tasks/cancel",
    // Server → client requests.
    SamplingCreateMessage => "sampling/createMessage",
    ElicitationCreate => "elicitation/create",
    RootsList => "roots/list",
    // Notifications.
    Initialized => "notifications/initialized",
    Cancelled => "notifications/cancelled",
    Progress => "notifications/progress",
    LogMessage => "notifications/message",
    RootsListChanged => "notifications/roots/list_changed",
    ToolsListChanged => "notifications/tools/list_changed",
    PromptsListChanged => "notifications/prompts/list_changed",
    ResourcesListChanged => "notifications/resources/list_changed",
    ResourceUpdated => "notifications/resources/updated",
    /// 2026-07-28: a listen stream's acknowledgement.
    SubscriptionsAcknowledged => "notifications/subscriptions/acknowledged",
}

/// A method name the proxy does not know. Only [`Method::parse`] makes one,
/// so an `Other` never holds a known name (equality stays sound).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unknown(Arc<str>);

/// The four lists a server publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum List {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl List {
    pub const ALL: [List; 4] = [
        List::Tools,
        List::Prompts,
        List::Resources,
        List::ResourceTemplates,
    ];

    /// The request that reads the list.
    pub fn method(self) -> Method {
        match self {
            Self::Tools => Method::ToolsList,
            Self::Prompts => Method::PromptsList,
            Self::Resources => Method::ResourcesList,
            Self::ResourceTemplates => Method::ResourceTemplatesList,
        }
    }

    /// The key of the items in the list's result.
    pub fn result_key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }

    /// The server capability that offers the list.
    pub fn capability(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources | Self::ResourceTemplates => "resources",
        }
    }

    /// The notification that tells the list changed (templates change with
    /// the resources).
    pub fn changed(self) -> Method {
        match self {
            Self::Tools => Method::ToolsListChanged,
            Self::Prompts => Method::PromptsListChanged,
            Self::Resources | Self::ResourceTemplates => Method::ResourcesListChanged,
        }
    }
}

impl Method {
    /// The method of `message`, when it names one.
    pub fn of(message: &Value) -> Option<Self> {
        super::method(message).map(Self::parse)
    }

    /// The method of `message`, the empty (unknown) name when it names
    /// none: what an exchange of a message without one is recorded as.
    pub fn named_in(message: &Value) -> Self {
        Self::parse(super::method(message).unwrap_or_default())
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Other(_))
    }

    /// The handshake revisions' methods that 2026-07-28 removed: a
    /// stateless request naming one is an unknown method.
    pub fn removed_in_modern(&self) -> bool {
        matches!(
            self,
            Self::Initialize
                | Self::Ping
                | Self::LoggingSetLevel
                | Self::ResourcesSubscribe
                | Self::ResourcesUnsubscribe
        )
    }

    /// The client→server requests of 2026-07-28 the proxy serves: a request
    /// of any other method is one the proxy does not know (404 over HTTP),
    /// while an unknown-method error to one of these came from a server.
    pub fn served_modern(&self) -> bool {
        matches!(
            self,
            Self::ServerDiscover
                | Self::SubscriptionsListen
                | Self::ToolsList
                | Self::ToolsCall
                | Self::PromptsList
                | Self::PromptsGet
                | Self::ResourcesList
                | Self::ResourceTemplatesList
                | Self::ResourcesRead
                | Self::CompletionComplete
        ) || self.is_task()
    }

    /// The 2026-07-28 results that carry cache hints (`ttlMs`, `cacheScope`).
    pub fn cacheable(&self) -> bool {
        matches!(self, Self::ServerDiscover | Self::ResourcesRead) || self.list().is_some()
    }

    /// The parameter the 2026-07-28 `Mcp-Name` header repeats, for the
    /// requests that need one.
    pub fn routing_key(&self) -> Option<&'static str> {
        match self {
            Self::ToolsCall | Self::PromptsGet => Some("name"),
            Self::ResourcesRead => Some("uri"),
            // The tasks extension: the task's id.
            _ if self.is_task() => Some("taskId"),
            _ => None,
        }
    }

    /// The requests a 2026-07-28 server may answer with `input_required`
    /// (multi round-trip requests).
    pub fn takes_rounds(&self) -> bool {
        matches!(
            self,
            Self::ToolsCall | Self::PromptsGet | Self::ResourcesRead
        )
    }

    /// A request of the tasks extension.
    pub fn is_task(&self) -> bool {
        matches!(self, Self::TasksGet | Self::TasksUpdate | Self::TasksCancel)
    }

    /// The list this request reads.
    pub fn list(&self) -> Option<List> {
        List::ALL.into_iter().find(|list| list.method() == *self)
    }

    /// The list this notification says changed (resources: the templates
    /// too).
    pub fn list_changed(&self) -> Option<List> {
        match self {
            Self::ToolsListChanged => Some(List::Tools),
            Self::PromptsListChanged => Some(List::Prompts),
            Self::ResourcesListChanged => Some(List::Resources),
            _ => None,
        }
    }

    /// The client capability a server→client request needs.
    pub fn client_capability(&self) -> Option<&'static str> {
        match self {
            Self::SamplingCreateMessage => Some("sampling"),
            Self::ElicitationCreate => Some("elicitation"),
            Self::RootsList => Some("roots"),
            _ => None,
        }
    }

    /// Allowed before a session's `initialize` has finished, and never
    /// counted by quotas.
    pub fn before_initialize(&self) -> bool {
        matches!(self, Self::Initialize | Self::Ping)
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Method {
    fn from(name: &str) -> Self {
        Self::parse(name)
    }
}

impl PartialEq<str> for Method {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_itself() {
        for method in Method::KNOWN {
            assert_eq!(Method::parse(method.as_str()), *method);
            assert!(method.is_known(), "{method}");
        }
        for name in [
            "",
            "tools/Call",
            "tools/call ",
            "x/y",
            "notifications/x",
            "ping\0",
        ] {
            let method = Method::parse(name);
            assert_eq!(method.as_str(), name);
            assert!(!method.is_known(), "{name:?}");
        }
        let names: std::collections::HashSet<&str> =
            Method::KNOWN.iter().map(Method::as_str).collect();
        assert_eq!(names.len(), Method::KNOWN.len(), "a name declared twice");
    }

    #[test]
    fn the_predicates_hold_the_lists_they_replace() {
        let named = |keep: fn(&Method) -> bool| -> Vec<&'static str> {
            Method::KNOWN
                .iter()
                .filter(|m| keep(m))
                .map(Method::as_str)
                .collect()
        };
        assert_eq!(
            named(Method::removed_in_modern),
            [
                "initialize",
                "ping",
                "logging/setLevel",
                "resources/subscribe",
                "resources/unsubscribe"
            ]
        );
        let mut served = named(Method::served_modern);
        served.sort_unstable();
        let mut expected = vec![
            "server/discover",
            "subscriptions/listen",
            "tools/list",
            "tools/call",
            "prompts/list",
            "prompts/get",
            "resources/list",
            "resources/templates/list",
            "resources/read",
            "completion/complete",
            "tasks/get",
            "tasks/update",
            "tasks/cancel",
        ];
        expected.sort_unstable();
        assert_eq!(served, expected);
        let mut cacheable = named(Method::cacheable);
        cacheable.sort_unstable();
        let mut expected = vec![
            "server/discover",
            "tools/list",
            "prompts/list",
            "resources/list",
            "resources/templates/list",
            "resources/read",
        ];
        expected.sort_unstable();
        assert_eq!(cacheable, expected);
        assert_eq!(
            named(Method::takes_rounds),
            ["tools/call", "prompts/get", "resources/read"]
        );
        assert_eq!(
            named(Method::is_task),
            ["tasks/get", "tasks/update", "tasks/cancel"]
        );
        assert_eq!(named(Method::before_initialize), ["initialize", "ping"]);
        let routed: Vec<_> = Method::KNOWN
            .iter()
            .filter_map(|m| Some((m.as_str(), m.routing_key()?)))
            .collect();
        assert_eq!(
            routed,
            [
                ("tools/call", "name"),
                ("prompts/get", "name"),
                ("resources/read", "uri"),
                ("tasks/get", "taskId"),
                ("tasks/update", "taskId"),
                ("tasks/cancel", "taskId"),
            ]
        );
        for list in List::ALL {
            assert_eq!(list.method().list(), Some(list));
            assert!(list.changed().list_changed().is_some());
        }
    }
}
