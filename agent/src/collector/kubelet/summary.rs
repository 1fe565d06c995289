//! The kubelet Summary API document (`GET /stats/summary`, the types of
//! `k8s.io/kubelet/pkg/apis/stats/v1alpha1`), reduced to the fields the kubelet
//! collector reports. Every field is optional, since a kubelet leaves out what it
//! does not know (a pod that just started has no CPU figure yet, a host-network
//! pod no network figures), and fields this module does not name are ignored. A
//! body that is not such a document is an error, never a panic.

use serde::Deserialize;

/// The whole document.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The node itself.
    #[serde(default)]
    pub node: Option<NodeStats>,
    /// Every pod the kubelet runs.
    #[serde(default)]
    pub pods: Option<Vec<PodStats>>,
}

/// The node's part (only its name is used).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeStats {
    /// The node's name.
    #[serde(default)]
    pub node_name: Option<String>,
}

/// One pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStats {
    /// Which pod.
    #[serde(default)]
    pub pod_ref: Option<PodReference>,
    /// Its containers.
    #[serde(default)]
    pub containers: Option<Vec<ContainerStats>>,
    /// The pod's CPU (all containers).
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    /// The pod's memory (all containers).
    #[serde(default)]
    pub memory: Option<MemoryStats>,
    /// The pod's network (absent for host-network pods).
    #[serde(default)]
    pub network: Option<NetworkStats>,
    /// Its volumes (the key is singular in the API).
    #[serde(default)]
    pub volume: Option<Vec<VolumeStats>>,
    /// Its ephemeral storage: writable layers, logs and emptyDir volumes.
    #[serde(default, rename = "ephemeral-storage")]
    pub ephemeral_storage: Option<FsStats>,
}

/// Names a pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReference {
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its namespace.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Its uid.
    #[serde(default)]
    pub uid: Option<String>,
}

/// One container of a pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStats {
    /// The container's name in the pod spec.
    #[serde(default)]
    pub name: Option<String>,
    /// Its CPU.
    #[serde(default)]
    pub cpu: Option<CpuStats>,
    /// Its memory.
    #[serde(default)]
    pub memory: Option<MemoryStats>,
}

/// CPU figures.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// CPU in use over the kubelet's last sampling window, in billionths of a core.
    #[serde(default)]
    pub usage_nano_cores: Option<f64>,
}

/// Memory figures.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// All memory in use, page cache included.
    #[serde(default)]
    pub usage_bytes: Option<f64>,
    /// The working set: what the kubelet evicts on.
    #[serde(default)]
    pub working_set_bytes: Option<f64>,
}

/// Network figures: those of the default interface, and every interface.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkStats {
    /// Bytes received on the default interface, cumulative.
    #[serde(default)]
    pub rx_bytes: Option<f64>,
    /// Bytes sent on the default interface, cumulative.
    #[serde(default)]
    pub tx_bytes: Option<f64>,
    /// Every interface.
    #[serde(default)]
    pub interfaces: Option<Vec<InterfaceStats>>,
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStats {
    /// Bytes received, cumulative.
    #[serde(default)]
    pub rx_bytes: Option<f64>,
    /// Bytes sent, cumulative.
    #[serde(default)]
    pub tx_bytes: Option<f64>,
}

/// Filesystem figures (ephemeral storage).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsStats {
    /// Bytes in use.
    #[serde(default)]
    pub used_bytes: Option<f64>,
}

/// One volume of a pod.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeStats {
    /// The volume's name in the pod spec.
    #[serde(default)]
    pub name: Option<String>,
    /// The claim, for a volume that is a PersistentVolumeClaim.
    #[serde(default)]
    pub pvc_ref: Option<PvcReference>,
    /// Bytes still available.
    #[serde(default)]
    pub available_bytes: Option<f64>,
    /// Size in bytes.
    #[serde(default)]
    pub capacity_bytes: Option<f64>,
    /// Bytes in use.
    #[serde(default)]
    pub used_bytes: Option<f64>,
    /// Free inodes.
    #[serde(default)]
    pub inodes_free: Option<f64>,
    /// Inodes.
    #[serde(default)]
    pub inodes: Option<f64>,
}

/// Names a PersistentVolumeClaim.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PvcReference {
    /// The claim's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Its namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Parses a Summary API body: a JSON object.
pub fn parse(body: &[u8]) -> Result<Summary, String> {
    // serde would also take a JSON array for a struct.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err("not a kubelet summary: not a JSON object".into());
    }
    serde_json::from_slice(body).map_err(|e| format!("not a kubelet summary: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_fields_are_read_and_others_ignored() {
        let s = parse(
            br#"{"node":{"nodeName":"n1","cpu":{"usageNanoCores":5}},
                 "pods":[{"podRef":{"name":"p","namespace":"ns","uid":"u"},
                          "startTime":"2024-01-01T00:00:00Z",
                          "cpu":{"time":"t","usageNanoCores":250000000,"usageCoreNanoSeconds":9},
                          "network":{"name":"eth0","rxBytes":1,"txBytes":2,"interfaces":[{"name":"eth0","rxBytes":1,"txBytes":2}]},
                          "volume":[{"name":"data","pvcRef":{"name":"c","namespace":"ns"},"capacityBytes":10}],
                          "ephemeral-storage":{"usedBytes":7}}]}"#,
        )
        .unwrap();
        assert_eq!(s.node.unwrap().node_name.as_deref(), Some("n1"));
        let pod = &s.pods.unwrap()[0];
        assert_eq!(
            pod.pod_ref.as_ref().unwrap().namespace.as_deref(),
            Some("ns")
        );
        assert_eq!(
            pod.cpu.as_ref().unwrap().usage_nano_cores,
            Some(250_000_000.0)
        );
        assert_eq!(pod.network.as_ref().unwrap().tx_bytes, Some(2.0));
        let volume = &pod.volume.as_ref().unwrap()[0];
        assert_eq!(volume.pvc_ref.as_ref().unwrap().name.as_deref(), Some("c"));
        assert_eq!(volume.capacity_bytes, Some(10.0));
        assert_eq!(volume.inodes, None);
        assert_eq!(
            pod.ephemeral_storage.as_ref().unwrap().used_bytes,
            Some(7.0)
        );
    }

    #[test]
    fn anything_may_be_missing_or_null() {
        assert_eq!(parse(b"{}").unwrap(), Summary::default());
        let s =
            parse(br#"{"node":null,"pods":[{},{"podRef":null,"cpu":{"usageNanoCores":null}}]}"#)
                .unwrap();
        assert_eq!(s.pods.unwrap().len(), 2);
    }

    #[test]
    fn a_malformed_body_is_an_error() {
        for body in [
            &b""[..],
            b"not json",
            b"[]",
            b"  [{}]",
            b"null",
            br#"{"pods":{}}"#,
            br#"{"pods":[{"cpu":{"usageNanoCores":"many"}}]}"#,
            br#"{"pods":[{"podRef":{"name":"p"}"#,
        ] {
            assert!(parse(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
