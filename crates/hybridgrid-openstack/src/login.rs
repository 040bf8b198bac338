//! Which user the node channel logs in as on each node: the cluster file's `ssh_user` when it
//! names one, else the user of the node's image — Glance's `os_admin_user` property, else the
//! distribution's usual cloud user from `os_distro`, else from the image's name — else `debian`.

use std::collections::BTreeMap;

use hybridgrid_core::plan::NodePlan;
use serde_json::Value;

/// The login user when nothing names one.
pub const FALLBACK_USER: &str = "debian";

/// The cloud images' usual login users, by the distribution's name (Glance's `os_distro`
/// values, which are also what image names start with).
const DISTRO_USERS: [(&str, &str); 8] = [
    ("ubuntu", "ubuntu"),
    ("debian", "debian"),
    ("centos", "centos"),
    ("rocky", "rocky"),
    ("alma", "almalinux"),
    ("fedora", "fedora"),
    ("rhel", "cloud-user"),
    ("opensuse", "opensuse"),
];

/// The login users of a cluster's nodes.
#[derive(Debug, Clone, Default)]
pub struct LoginUsers {
    /// The cluster file's `ssh_user`: every node.
    pub explicit: Option<String>,
    /// (site, image name) → the user Glance's properties name.
    pub by_image: BTreeMap<(String, String), String>,
}

impl LoginUsers {
    /// The user `node` is reached as.
    pub fn of(&self, node: &NodePlan) -> String {
        if let Some(u) = &self.explicit {
            return u.clone();
        }
        let Some(image) = &node.image else {
            return FALLBACK_USER.to_owned();
        };
        self.by_image
            .get(&(node.site.clone(), image.clone()))
            .cloned()
            .or_else(|| user_from_name(image))
            .unwrap_or_else(|| FALLBACK_USER.to_owned())
    }
}

/// The login user an image's Glance record names: `os_admin_user`, else the usual user of its
/// `os_distro`, else of its name.
pub fn user_from_image(image: &Value) -> Option<String> {
    let prop = |k: &str| image[k].as_str().map(str::trim).filter(|v| !v.is_empty());
    if let Some(user) = prop("os_admin_user") {
        return Some(user.to_owned());
    }
    prop("os_distro")
        .and_then(user_from_name)
        .or_else(|| prop("name").and_then(user_from_name))
}

/// The usual login user of an image named like a distribution ("Ubuntu-22.04",
/// "debian-12-generic", "Rocky Linux 9").
pub fn user_from_name(name: &str) -> Option<String> {
    let name = name.to_ascii_lowercase();
    DISTRO_USERS
        .iter()
        .find(|(distro, _)| name.contains(distro))
        .map(|(_, user)| (*user).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn glance_properties_come_before_the_name() {
        let image = json!({"name": "Ubuntu-22.04", "os_admin_user": "admin"});
        assert_eq!(user_from_image(&image).as_deref(), Some("admin"));
        let image = json!({"name": "base-image", "os_distro": "ubuntu"});
        assert_eq!(user_from_image(&image).as_deref(), Some("ubuntu"));
        let image = json!({"name": "debian-12-generic"});
        assert_eq!(user_from_image(&image).as_deref(), Some("debian"));
        assert_eq!(user_from_image(&json!({"name": "golden"})), None);
    }

    #[test]
    fn names_of_the_usual_cloud_images() {
        for (name, user) in [
            ("Ubuntu-22.04", "ubuntu"),
            ("Ubuntu 22.04 LTS (2024-01-01)", "ubuntu"),
            ("debian-12-generic", "debian"),
            ("Rocky Linux 9", "rocky"),
            ("AlmaLinux-9", "almalinux"),
        ] {
            assert_eq!(user_from_name(name).as_deref(), Some(user), "{name}");
        }
    }

    #[test]
    fn the_cluster_files_user_wins_and_debian_is_the_fallback() {
        let mut node = NodePlan {
            name: "b-worker-1".into(),
            site: "b".into(),
            role: hybridgrid_core::plan::Role::Worker,
            lan_ip: std::net::Ipv4Addr::new(10, 0, 0, 6),
            tunnel_ip: None,
            public_ip: None,
            cpus: 1,
            memory_mib: 512,
            flavor: None,
            image: Some("Ubuntu-22.04".into()),
            wireguard: None,
            on_demand: false,
            pair: None,
            own_public_ip: None,
        };
        let mut users = LoginUsers::default();
        assert_eq!(users.of(&node), "ubuntu");
        users
            .by_image
            .insert(("b".into(), "Ubuntu-22.04".into()), "admin".into());
        assert_eq!(users.of(&node), "admin");
        users.explicit = Some("root".into());
        assert_eq!(users.of(&node), "root");
        node.image = Some("golden".into());
        users.explicit = None;
        assert_eq!(users.of(&node), FALLBACK_USER);
    }
}
