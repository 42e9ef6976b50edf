use serde::{Deserialize, Serialize};
use std::fmt;

/// Who caused an event. Events are defined by their actor, and every event records one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    pub role: Role,
    /// The actor's own id: a rider id for riders, a staff or service name otherwise.
    pub id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Dispatcher,
    Rider,
    Customer,
    Admin,
    System,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Dispatcher => "dispatcher",
            Role::Rider => "rider",
            Role::Customer => "customer",
            Role::Admin => "admin",
            Role::System => "system",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [
            Role::Dispatcher,
            Role::Rider,
            Role::Customer,
            Role::Admin,
            Role::System,
        ]
        .into_iter()
        .find(|role| role.as_str() == raw)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Actor {
    pub fn new(role: Role, id: impl Into<String>) -> Self {
        Self {
            role,
            id: id.into(),
        }
    }
}
