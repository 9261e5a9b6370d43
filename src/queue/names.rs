//! Every Redis name the service uses, behind the configurable key prefix
//! (empty in production, unique per test).

use crate::job::JobKind;

/// Builds stream and key names from the contract's fixed names.
#[derive(Debug, Clone)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Names under `prefix`.
    pub fn new(prefix: impl Into<String>) -> Names {
        Names {
            prefix: prefix.into(),
        }
    }

    /// The queue a job kind is read from.
    pub fn queue(&self, kind: JobKind) -> String {
        match kind {
            JobKind::Deploy => self.with_prefix("ansible:deploy:queue"),
            JobKind::Provision => self.with_prefix("provisioner:queue"),
        }
    }

    /// `deploy:result:<id>` or `provisioner:result:<id>`.
    pub fn result_key(&self, kind: JobKind, request_id: &str) -> String {
        match kind {
            JobKind::Deploy => self.with_prefix(&format!("deploy:result:{request_id}")),
            JobKind::Provision => self.with_prefix(&format!("provisioner:result:{request_id}")),
        }
    }

    /// `deploy:results` or `provisioner:results`.
    pub fn result_stream(&self, kind: JobKind) -> String {
        match kind {
            JobKind::Deploy => self.with_prefix("deploy:results"),
            JobKind::Provision => self.with_prefix("provisioner:results"),
        }
    }

    /// The dead-letter stream.
    pub fn dead_letters(&self) -> String {
        self.with_prefix("infra:dead")
    }

    /// A job's progress events stream.
    pub fn events(&self, request_id: &str) -> String {
        self.with_prefix(&format!("job:events:{request_id}"))
    }

    /// `name` without this prefix, for showing to people; unchanged when
    /// it does not start with the prefix.
    pub fn unprefixed<'a>(&self, name: &'a str) -> &'a str {
        name.strip_prefix(self.prefix.as_str()).unwrap_or(name)
    }

    fn with_prefix(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_names_are_the_contracts() {
        let names = Names::new("");
        assert_eq!(names.queue(JobKind::Deploy), "ansible:deploy:queue");
        assert_eq!(names.queue(JobKind::Provision), "provisioner:queue");
        assert_eq!(names.result_key(JobKind::Deploy, "d1"), "deploy:result:d1");
        assert_eq!(
            names.result_key(JobKind::Provision, "p1"),
            "provisioner:result:p1"
        );
        assert_eq!(names.result_stream(JobKind::Deploy), "deploy:results");
        assert_eq!(
            names.result_stream(JobKind::Provision),
            "provisioner:results"
        );
        assert_eq!(names.dead_letters(), "infra:dead");
        assert_eq!(names.events("d1"), "job:events:d1");
    }

    #[test]
    fn a_prefix_applies_to_every_name() {
        let names = Names::new("t1:");
        assert_eq!(names.queue(JobKind::Deploy), "t1:ansible:deploy:queue");
        assert_eq!(
            names.result_key(JobKind::Deploy, "d1"),
            "t1:deploy:result:d1"
        );
        assert_eq!(names.dead_letters(), "t1:infra:dead");
    }

    #[test]
    fn unprefixed_drops_only_this_prefix() {
        let names = Names::new("t1:");
        assert_eq!(names.unprefixed("t1:infra:dead"), "infra:dead");
        assert_eq!(names.unprefixed("t2:infra:dead"), "t2:infra:dead");
        assert_eq!(Names::new("").unprefixed("infra:dead"), "infra:dead");
    }
}
