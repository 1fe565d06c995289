//! The Kubernetes manifests in `packaging/kubernetes`: the base and every overlay
//! render with `kubectl kustomize`, and every rendered object parses into its
//! Kubernetes type (k8s-openapi; small strict types for cert-manager's `Issuer`
//! and `Certificate`) with nothing left over. k8s-openapi skips fields it does not
//! know, so each object is serialized back and every path of the rendered object
//! must still be there: a typo such as `replica: 2` is an error naming the object
//! and the field. Then what the deployment relies on: the aggregator's RBAC is
//! exactly what its watchers read, every container is hardened and sized, agents
//! run on every node with a certificate naming their pod, references between
//! the objects resolve, and the configuration files load with the binaries' own
//! configuration types.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use infrawatch_aggregator::auth::tokens::{TokenConfig, TokenHash};
use infrawatch_aggregator::config::{AggregatorConfig, MachineBinding};
use infrawatch_common::config::{ConfigSources, load};
use infrawatch_common::role::Role;
use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Secret, Service, ServiceAccount, Volume,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role as RbacRole, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The kustomizations under `packaging/kubernetes`, each rendered on its own.
const KUSTOMIZATIONS: [&str; 3] = ["base", "overlays/cert-manager", "overlays/static-certs"];
/// The namespace the overlays install into.
const NAMESPACE: &str = "infrawatch";
const CERT_MANAGER_V1: &str = "cert-manager.io/v1";
const AGENT: &str = "infrawatch-agent";
const AGGREGATOR: &str = "infrawatch-aggregator";

/// What the aggregator's Kubernetes watchers read: `get`, `list` and `watch` on
/// these, by API group, and nothing else.
const AGGREGATOR_READS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "nodes",
            "pods",
            "services",
            "namespaces",
            "persistentvolumes",
            "persistentvolumeclaims",
            "resourcequotas",
        ],
    ),
    ("discovery.k8s.io", &["endpointslices"]),
    ("events.k8s.io", &["events"]),
    (
        "apps",
        &["deployments", "replicasets", "statefulsets", "daemonsets"],
    ),
    ("batch", &["jobs", "cronjobs"]),
    ("autoscaling", &["horizontalpodautoscalers"]),
    ("policy", &["poddisruptionbudgets"]),
];

/// Attributes of the cert-manager CSI driver (`csi.cert-manager.io/<name>`).
const CSI_ATTRIBUTES: &[&str] = &[
    "issuer-name",
    "issuer-kind",
    "issuer-group",
    "common-name",
    "dns-names",
    "ip-sans",
    "uri-sans",
    "duration",
    "renew-before",
    "is-ca",
    "key-usages",
    "key-encoding",
    "reuse-private-key",
    "ca-file",
    "certificate-file",
    "privatekey-file",
    "fs-group",
    "pkcs12-enable",
    "pkcs12-filename",
    "pkcs12-password",
    "literal-subject",
    "organizations",
    "organizationalunits",
    "countries",
    "provinces",
    "localities",
    "streetaddresses",
    "postalcodes",
    "serialnumber",
];

const KUBECTL_MISSING: &str = "kubectl is not installed: these tests render packaging/kubernetes \
     with `kubectl kustomize`. Install kubectl 1.27 or newer (kustomize v5): the upstream \
     binary (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/), or the Debian \
     package kubernetes-client where it is that new (`apt-get install kubernetes-client`)";

// ---------------------------------------------------------------------------
// cert-manager's custom resources: no k8s-openapi type, so the fields these
// manifests use, and no others.

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Issuer {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: IssuerSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssuerSpec {
    self_signed: Option<SelfSignedIssuer>,
    ca: Option<CaIssuer>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct SelfSignedIssuer {}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CaIssuer {
    secret_name: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Certificate {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: CertificateSpec,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CertificateSpec {
    secret_name: String,
    issuer_ref: IssuerRef,
    #[serde(rename = "isCA")]
    is_ca: Option<bool>,
    common_name: Option<String>,
    dns_names: Option<Vec<String>>,
    uris: Option<Vec<String>>,
    usages: Option<Vec<KeyUsage>>,
    duration: Option<String>,
    renew_before: Option<String>,
    private_key: Option<PrivateKey>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct IssuerRef {
    name: String,
    kind: Option<IssuerKind>,
    group: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
enum IssuerKind {
    Issuer,
    ClusterIssuer,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrivateKey {
    algorithm: Option<KeyAlgorithm>,
    size: Option<u32>,
    encoding: Option<KeyEncoding>,
    rotation_policy: Option<RotationPolicy>,
}

#[derive(Debug, Deserialize, Serialize)]
enum KeyAlgorithm {
    #[serde(rename = "RSA")]
    Rsa,
    #[serde(rename = "ECDSA")]
    Ecdsa,
    Ed25519,
}

#[derive(Debug, Deserialize, Serialize)]
enum KeyEncoding {
    #[serde(rename = "PKCS1")]
    Pkcs1,
    #[serde(rename = "PKCS8")]
    Pkcs8,
}

#[derive(Debug, Deserialize, Serialize)]
enum RotationPolicy {
    Never,
    Always,
}

/// cert-manager's key usages (also the CSI driver's `key-usages`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
enum KeyUsage {
    #[serde(rename = "signing")]
    Signing,
    #[serde(rename = "digital signature")]
    DigitalSignature,
    #[serde(rename = "content commitment")]
    ContentCommitment,
    #[serde(rename = "key encipherment")]
    KeyEncipherment,
    #[serde(rename = "key agreement")]
    KeyAgreement,
    #[serde(rename = "data encipherment")]
    DataEncipherment,
    #[serde(rename = "cert sign")]
    CertSign,
    #[serde(rename = "crl sign")]
    CrlSign,
    #[serde(rename = "encipher only")]
    EncipherOnly,
    #[serde(rename = "decipher only")]
    DecipherOnly,
    #[serde(rename = "any")]
    Any,
    #[serde(rename = "server auth")]
    ServerAuth,
    #[serde(rename = "client auth")]
    ClientAuth,
    #[serde(rename = "code signing")]
    CodeSigning,
    #[serde(rename = "email protection")]
    EmailProtection,
    #[serde(rename = "s/mime")]
    Smime,
    #[serde(rename = "ipsec end system")]
    IpsecEndSystem,
    #[serde(rename = "ipsec tunnel")]
    IpsecTunnel,
    #[serde(rename = "ipsec user")]
    IpsecUser,
    #[serde(rename = "timestamping")]
    Timestamping,
    #[serde(rename = "ocsp signing")]
    OcspSigning,
    #[serde(rename = "microsoft sgc")]
    MicrosoftSgc,
    #[serde(rename = "netscape sgc")]
    NetscapeSgc,
}

// ---------------------------------------------------------------------------
// The validator: one rendered object into its type, nothing left over.

/// `Kind name` of a rendered object, for messages.
fn describe(doc: &Value) -> String {
    format!(
        "{} {}",
        doc["kind"].as_str().unwrap_or("(no kind)"),
        doc["metadata"]["name"].as_str().unwrap_or("(no name)")
    )
}

/// Parses one rendered object into the type of its apiVersion and kind and
/// serializes it back; every problem names the object and the field path.
fn check_object(doc: &Value) -> Result<(), Vec<String>> {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    let what = describe(doc);
    macro_rules! typed {
        ($($t:ty),* $(,)?) => {
            $(
                if api_version == <$t as Resource>::API_VERSION && kind == <$t as Resource>::KIND {
                    return round_trip::<$t>(doc, &what);
                }
            )*
        };
    }
    typed!(
        Namespace,
        ServiceAccount,
        ConfigMap,
        Secret,
        Service,
        DaemonSet,
        Deployment,
        ClusterRole,
        ClusterRoleBinding,
        RbacRole,
        RoleBinding,
        PodDisruptionBudget,
        HorizontalPodAutoscaler,
        NetworkPolicy,
    );
    match (api_version, kind) {
        (CERT_MANAGER_V1, "Issuer") => round_trip::<Issuer>(doc, &what),
        (CERT_MANAGER_V1, "Certificate") => round_trip::<Certificate>(doc, &what),
        _ => Err(vec![format!(
            "{what}: unknown kind {kind:?} of apiVersion {api_version:?} (not a type these \
             manifests use: add it to tests/tests/it/manifests.rs)"
        )]),
    }
}

/// `doc` as a `T` and back: a field `T` does not know is missing afterwards.
fn round_trip<T: DeserializeOwned + Serialize>(doc: &Value, what: &str) -> Result<(), Vec<String>> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| vec![format!("{what}: {e}")])?;
    let back =
        serde_json::to_value(&typed).map_err(|e| vec![format!("{what}: serializing: {e}")])?;
    let mut problems = Vec::new();
    left_over(doc, &back, "", &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems
            .into_iter()
            .map(|p| format!("{what}: {p}"))
            .collect())
    }
}

/// Pushes every path of `original` that `parsed` lost or changed. Empty maps,
/// lists and nulls may be dropped; a number and a string of the same text are
/// equal (IntOrString and Quantity keep what they were given).
fn left_over(original: &Value, parsed: &Value, path: &str, problems: &mut Vec<String>) {
    match (original, parsed) {
        (Value::Object(o), Value::Object(p)) => {
            for (key, value) in o {
                let field = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match p.get(key) {
                    Some(kept) => left_over(value, kept, &field, problems),
                    None if is_empty(value) => {}
                    None => problems.push(format!("unknown field `{field}`")),
                }
            }
        }
        (Value::Array(o), Value::Array(p)) => {
            if o.len() != p.len() {
                problems.push(format!(
                    "`{path}` has {} items, {} once parsed",
                    o.len(),
                    p.len()
                ));
            }
            for (i, (a, b)) in o.iter().zip(p).enumerate() {
                left_over(a, b, &format!("{path}[{i}]"), problems);
            }
        }
        (a, b) if same_scalar(a, b) => {}
        (o, _) if is_empty(o) && is_empty(parsed) => {}
        (o, p) => problems.push(format!("`{path}` is {o} but {p} once parsed")),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn same_scalar(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n)) => {
            n.to_string() == *s
        }
        _ => a == b,
    }
}

/// The YAML documents of a rendering (empty ones dropped).
fn documents(yaml: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| e.to_string())?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// Every problem of every object of a rendering, duplicates included.
fn check_all(docs: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for doc in docs {
        if let Err(p) = check_object(doc) {
            problems.extend(p);
        }
        let key = (
            doc["apiVersion"].to_string(),
            doc["kind"].to_string(),
            doc["metadata"]["namespace"].to_string(),
            doc["metadata"]["name"].to_string(),
        );
        if !seen.insert(key) {
            problems.push(format!("{}: defined twice", describe(doc)));
        }
    }
    problems
}

// ---------------------------------------------------------------------------
// Rendering.

fn kubernetes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/kubernetes")
}

/// `kubectl kustomize DIR`.
fn kustomize(dir: &Path) -> String {
    let output = match Command::new("kubectl").arg("kustomize").arg(dir).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!("{KUBECTL_MISSING}"),
        Err(e) => panic!("running `kubectl kustomize {}`: {e}", dir.display()),
    };
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed (kustomize v5 is needed, kubectl 1.27 or newer):\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kustomize writes UTF-8")
}

/// One kustomization, rendered.
struct Rendering {
    name: &'static str,
    docs: Vec<Value>,
}

impl Rendering {
    fn render(name: &'static str, dir: &Path) -> Self {
        let yaml = kustomize(dir);
        let docs = documents(&yaml)
            .unwrap_or_else(|e| panic!("{name}: the rendered YAML does not parse: {e}"));
        Self { name, docs }
    }

    fn is_overlay(&self) -> bool {
        self.name != "base"
    }

    /// Every object of `api_version` and `kind`, as a `T`.
    fn custom<T: DeserializeOwned>(&self, api_version: &str, kind: &str) -> Vec<T> {
        self.docs
            .iter()
            .filter(|d| d["apiVersion"] == api_version && d["kind"] == kind)
            .map(|d| {
                serde_json::from_value(d.clone())
                    .unwrap_or_else(|e| panic!("{}: {}: {e}", self.name, describe(d)))
            })
            .collect()
    }

    fn all<T: Resource + DeserializeOwned>(&self) -> Vec<T> {
        self.custom(T::API_VERSION, T::KIND)
    }

    fn find<T: Resource + DeserializeOwned>(&self, name: &str) -> Option<T> {
        self.docs
            .iter()
            .find(|d| {
                d["apiVersion"] == T::API_VERSION
                    && d["kind"] == T::KIND
                    && d["metadata"]["name"] == name
            })
            .map(|d| serde_json::from_value(d.clone()).expect("checked type"))
    }

    fn one<T: Resource + DeserializeOwned>(&self, name: &str) -> T {
        self.find(name)
            .unwrap_or_else(|| panic!("{}: no {} {name}", self.name, T::KIND))
    }

    fn issuers(&self) -> Vec<Issuer> {
        self.custom(CERT_MANAGER_V1, "Issuer")
    }

    fn certificates(&self) -> Vec<Certificate> {
        self.custom(CERT_MANAGER_V1, "Certificate")
    }

    fn agent_pod(&self) -> PodSpec {
        pod_spec_of_daemon_set(&self.one::<DaemonSet>(AGENT))
    }

    fn aggregator_pod(&self) -> PodSpec {
        pod_spec_of_deployment(&self.one::<Deployment>(AGGREGATOR))
    }

    /// A file of the ConfigMap that the pod's volume `volume` mounts.
    fn config_file(&self, pod: &PodSpec, volume: &str, file: &str) -> String {
        let cm_name = &volume_named(pod, volume)
            .config_map
            .as_ref()
            .unwrap_or_else(|| panic!("{}: volume {volume} is not a ConfigMap", self.name))
            .name;
        let cm = self.one::<ConfigMap>(cm_name);
        cm.data
            .and_then(|d| d.get(file).cloned())
            .unwrap_or_else(|| panic!("{}: ConfigMap {cm_name} has no {file}", self.name))
    }

    /// The agent's configuration file as generic values.
    fn agent_config(&self) -> BTreeMap<String, Value> {
        let text = self.config_file(&self.agent_pod(), "config", "agent.toml");
        toml_values(&text)
    }

    /// The cluster name that the kustomization configures (what the
    /// aggregator's environment takes it from).
    fn cluster_name(&self) -> String {
        let pod = self.aggregator_pod();
        let env = self.environment(container(&pod, "aggregator"));
        env.get("CLUSTER_NAME")
            .cloned()
            .unwrap_or_else(|| panic!("{}: the aggregator has no CLUSTER_NAME", self.name))
    }

    /// The environment of `c` as its pod would see it: values from this
    /// rendering's ConfigMaps, stand-ins for the pod's fields and for the
    /// Secrets created beforehand, `$(VAR)` expanded as the kubelet does.
    fn environment(&self, c: &Container) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        for e in c.env.iter().flatten() {
            let value = if let Some(value) = &e.value {
                let mut value = value.clone();
                for (name, known) in &env {
                    value = value.replace(&format!("$({name})"), known);
                }
                value
            } else {
                let from = e.value_from.as_ref().expect("a value or a source");
                if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => "infrawatch-pod-0".to_string(),
                        "metadata.namespace" => NAMESPACE.to_string(),
                        "spec.nodeName" => "node-1".to_string(),
                        "status.hostIP" => "192.0.2.1".to_string(),
                        other => panic!("{}: env {} from {other}", self.name, e.name),
                    }
                } else if let Some(cm) = &from.config_map_key_ref {
                    self.one::<ConfigMap>(&cm.name)
                        .data
                        .and_then(|d| d.get(&cm.key).cloned())
                        .unwrap_or_else(|| panic!("{}: no {} in {}", self.name, cm.key, cm.name))
                } else if let Some(s) = &from.secret_key_ref {
                    match (s.name.as_str(), s.key.as_str()) {
                        ("infrawatch-storage", "url") => {
                            "postgres://infrawatch@db.example/infrawatch".to_string()
                        }
                        other => panic!("{}: env {} from Secret {other:?}", self.name, e.name),
                    }
                } else {
                    panic!("{}: env {}: an unexpected source", self.name, e.name)
                }
            };
            env.insert(e.name.clone(), value);
        }
        env
    }
}

/// The base and every overlay, rendered once per test process.
fn renderings() -> &'static [Rendering] {
    static RENDERED: OnceLock<Vec<Rendering>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        KUSTOMIZATIONS
            .into_iter()
            .map(|k| Rendering::render(k, &kubernetes_dir().join(k)))
            .collect()
    })
}

fn pod_spec_of_daemon_set(ds: &DaemonSet) -> PodSpec {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("DaemonSet has a pod spec")
}

fn pod_spec_of_deployment(d: &Deployment) -> PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("Deployment has a pod spec")
}

fn volume_named<'a>(pod: &'a PodSpec, name: &str) -> &'a Volume {
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn container<'a>(pod: &'a PodSpec, name: &str) -> &'a Container {
    pod.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// Where `volume` is mounted in `c`, and whether read-only.
fn mount_of(c: &Container, volume: &str) -> Option<(String, bool)> {
    c.volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == volume)
        .map(|m| (m.mount_path.clone(), m.read_only == Some(true)))
}

fn named_port(c: &Container, name: &str) -> Option<i32> {
    c.ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(name))
        .map(|p| p.container_port)
}

/// Whether `selector` (matchLabels only) selects pods labelled `labels`.
fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    assert!(
        selector.match_expressions.is_none(),
        "only matchLabels selectors are used"
    );
    let wanted = selector.match_labels.clone().unwrap_or_default();
    !wanted.is_empty() && wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn template_labels_of_deployment(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

fn template_labels_of_daemon_set(d: &DaemonSet) -> BTreeMap<String, String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}

/// A TOML file as generic values, read the way the binaries read their files.
fn toml_values(text: &str) -> BTreeMap<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, text).unwrap();
    load(ConfigSources {
        file: Some(&file),
        env_prefix: "INFRAWATCH_MANIFESTS_TEST_UNSET_",
        overrides: &[],
    })
    .unwrap_or_else(|e| panic!("not TOML: {e}\n{text}"))
}

fn string_at<'a>(values: &'a BTreeMap<String, Value>, path: &str) -> &'a str {
    let mut parts = path.split('.');
    let first = parts.next().unwrap();
    let mut v = values.get(first).unwrap_or_else(|| panic!("no `{path}`"));
    for part in parts {
        v = &v[part];
    }
    v.as_str()
        .unwrap_or_else(|| panic!("`{path}` is not a string"))
}

/// Splits `/dir/file` into its directory and file name.
fn dir_and_file(path: &str) -> (&str, &str) {
    path.rsplit_once('/')
        .unwrap_or_else(|| panic!("{path:?} is not absolute"))
}

/// A Go duration such as `24h` or `1h30m`, as cert-manager reads them.
fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let unit = ["ns", "us", "ms", "h", "m", "s"]
            .into_iter()
            .find(|u| rest.starts_with(u));
        match unit {
            Some(u) => rest = &rest[u.len()..],
            None => return false,
        }
    }
    true
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}: {} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The tests.

#[test]
fn every_rendered_object_parses_into_its_type_with_no_unknown_field() {
    for r in renderings() {
        assert!(!r.docs.is_empty(), "{}: renders nothing", r.name);
        assert_no_problems(r.name, &check_all(&r.docs));
        let mut expected = vec![
            ("ServiceAccount", AGENT),
            ("ServiceAccount", AGGREGATOR),
            ("ClusterRole", AGENT),
            ("ClusterRole", AGGREGATOR),
            ("ClusterRoleBinding", AGENT),
            ("ClusterRoleBinding", AGGREGATOR),
            ("DaemonSet", AGENT),
            ("Deployment", AGGREGATOR),
            ("Service", AGGREGATOR),
            ("PodDisruptionBudget", AGGREGATOR),
            ("HorizontalPodAutoscaler", AGGREGATOR),
            ("NetworkPolicy", AGENT),
            ("NetworkPolicy", AGGREGATOR),
            ("ConfigMap", "infrawatch-agent"),
            ("ConfigMap", "infrawatch-aggregator"),
            ("ConfigMap", "infrawatch-cluster"),
        ];
        if r.is_overlay() {
            expected.push(("Namespace", NAMESPACE));
        }
        for (kind, name) in expected {
            assert!(
                r.docs.iter().any(|d| {
                    let n = d["metadata"]["name"].as_str().unwrap_or_default();
                    // Generated ConfigMaps carry a hash of their content.
                    d["kind"] == kind
                        && (n == name
                            || (kind == "ConfigMap" && n.starts_with(&format!("{name}-"))))
                }),
                "{}: no {kind} {name}",
                r.name
            );
        }
        // Namespaced objects land in the overlay's namespace; the base names none.
        for d in &r.docs {
            let cluster_scoped = matches!(
                d["kind"].as_str(),
                Some("Namespace" | "ClusterRole" | "ClusterRoleBinding")
            );
            let ns = d["metadata"]["namespace"].as_str();
            let want = (r.is_overlay() && !cluster_scoped).then_some(NAMESPACE);
            assert_eq!(ns, want, "{}: namespace of {}", r.name, describe(d));
        }
    }
}

#[test]
fn the_aggregator_may_read_exactly_what_its_watchers_watch() {
    let expected: BTreeSet<(String, String, String)> = AGGREGATOR_READS
        .iter()
        .flat_map(|(group, resources)| {
            resources.iter().flat_map(move |res| {
                ["get", "list", "watch"]
                    .into_iter()
                    .map(move |verb| (group.to_string(), res.to_string(), verb.to_string()))
            })
        })
        .collect();
    let agent_expected =
        BTreeSet::from([(String::new(), "nodes/stats".to_string(), "get".to_string())]);
    for r in renderings() {
        // Nothing namespaced: leader election uses the database, not Leases.
        assert!(r.all::<RbacRole>().is_empty(), "{}: a Role", r.name);
        assert!(
            r.all::<RoleBinding>().is_empty(),
            "{}: a RoleBinding",
            r.name
        );
        let roles: BTreeSet<String> = r
            .all::<ClusterRole>()
            .into_iter()
            .filter_map(|c| c.metadata.name)
            .collect();
        assert_eq!(
            roles,
            BTreeSet::from([AGENT.to_string(), AGGREGATOR.to_string()]),
            "{}: ClusterRoles",
            r.name
        );
        for (name, want) in [(AGGREGATOR, &expected), (AGENT, &agent_expected)] {
            let role = r.one::<ClusterRole>(name);
            assert!(role.aggregation_rule.is_none(), "{}: {name}", r.name);
            let granted = grants(&role);
            let missing: Vec<_> = want.difference(&granted).collect();
            let extra: Vec<_> = granted.difference(want).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "{}: ClusterRole {name}: missing {missing:?}, not wanted {extra:?}",
                r.name
            );
            let binding = r.one::<ClusterRoleBinding>(name);
            assert_eq!(binding.role_ref.kind, "ClusterRole");
            assert_eq!(binding.role_ref.name, name);
            let subjects = binding.subjects.unwrap_or_default();
            assert_eq!(subjects.len(), 1, "{}: subjects of {name}", r.name);
            assert_eq!(subjects[0].kind, "ServiceAccount");
            assert_eq!(subjects[0].name, name);
            assert!(r.find::<ServiceAccount>(name).is_some());
            if r.is_overlay() {
                assert_eq!(subjects[0].namespace.as_deref(), Some(NAMESPACE));
            }
        }
    }
}

/// Every (API group, resource, verb) a role grants.
fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "rules name resources only: {rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn every_container_is_hardened_and_has_requests_and_limits() {
    for r in renderings() {
        let mut problems = Vec::new();
        let pods = [
            (format!("DaemonSet {AGENT}"), r.agent_pod()),
            (format!("Deployment {AGGREGATOR}"), r.aggregator_pod()),
        ];
        assert_eq!(r.all::<DaemonSet>().len(), 1, "{}: DaemonSets", r.name);
        assert_eq!(r.all::<Deployment>().len(), 1, "{}: Deployments", r.name);
        for (what, pod) in &pods {
            if pod.host_network == Some(true)
                || pod.host_pid == Some(true)
                || pod.host_ipc == Some(true)
            {
                problems.push(format!("{what}: shares a host namespace"));
            }
            // The binaries read every INFRAWATCH_* variable and refuse unknown ones.
            if pod.enable_service_links != Some(false) {
                problems.push(format!("{what}: service links are on"));
            }
            let seccomp = pod
                .security_context
                .as_ref()
                .and_then(|s| s.seccomp_profile.as_ref())
                .map(|p| p.type_.as_str());
            if seccomp != Some("RuntimeDefault") {
                problems.push(format!("{what}: seccomp profile {seccomp:?}"));
            }
            for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
                let what = format!("{what}: container {}", c.name);
                let resources = c.resources.clone().unwrap_or_default();
                for (kind, set) in [
                    ("requests", resources.requests),
                    ("limits", resources.limits),
                ] {
                    for res in ["cpu", "memory"] {
                        if !set.as_ref().is_some_and(|s| s.contains_key(res)) {
                            problems.push(format!("{what}: no {kind}.{res}"));
                        }
                    }
                }
                let sc = c.security_context.clone().unwrap_or_default();
                if sc.read_only_root_filesystem != Some(true) {
                    problems.push(format!("{what}: root file system not read-only"));
                }
                if sc.allow_privilege_escalation != Some(false) {
                    problems.push(format!("{what}: privilege escalation allowed"));
                }
                if sc.privileged == Some(true) {
                    problems.push(format!("{what}: privileged"));
                }
                let caps = sc.capabilities.unwrap_or_default();
                if !caps.drop.iter().flatten().any(|d| d == "ALL") {
                    problems.push(format!("{what}: does not drop ALL capabilities"));
                }
                if caps.add.as_ref().is_some_and(|a| !a.is_empty()) {
                    problems.push(format!("{what}: adds capabilities {:?}", caps.add));
                }
            }
        }
        // The aggregator needs no root at all.
        let agg = r.aggregator_pod();
        let psc = agg.security_context.clone().unwrap_or_default();
        if psc.run_as_non_root != Some(true) || psc.run_as_user.is_none_or(|u| u == 0) {
            problems.push(format!("Deployment {AGGREGATOR}: may run as root"));
        }
        assert_no_problems(r.name, &problems);
    }
}

#[test]
fn agents_run_on_every_node_and_read_the_host_read_only() {
    for r in renderings() {
        let pod = r.agent_pod();
        let what = format!("{}: DaemonSet {AGENT}", r.name);
        let tolerates_all = pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()
                && t.value.is_none()
        });
        assert!(tolerates_all, "{what}: does not tolerate every taint");
        assert!(
            pod.affinity.is_none(),
            "{what}: an affinity limits the nodes"
        );
        assert_ne!(pod.host_network, Some(true), "{what}: host network");

        let agent = container(&pod, "agent");
        let env: BTreeMap<&str, Option<&str>> = agent
            .env
            .iter()
            .flatten()
            .map(|e| {
                let field = e
                    .value_from
                    .as_ref()
                    .and_then(|v| v.field_ref.as_ref())
                    .map(|f| f.field_path.as_str());
                (e.name.as_str(), field)
            })
            .collect();
        for (name, field) in [
            ("NODE_NAME", "spec.nodeName"),
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
        ] {
            assert_eq!(env.get(name), Some(&Some(field)), "{what}: env {name}");
        }

        // /proc and /sys of the node, read-only, where the agent's [host] looks;
        // the state directory is the only writable host path.
        let config = r.agent_config();
        let host_path_of = |path: &str| {
            pod.volumes
                .iter()
                .flatten()
                .find(|v| v.host_path.as_ref().is_some_and(|h| h.path == path))
                .unwrap_or_else(|| panic!("{what}: no hostPath {path}"))
                .name
                .clone()
        };
        for (host, key) in [
            ("/proc", "host.proc"),
            ("/sys", "host.sys"),
            ("/", "host.root"),
        ] {
            let volume = host_path_of(host);
            let mount = mount_of(agent, &volume);
            assert_eq!(
                mount,
                Some((string_at(&config, key).to_string(), true)),
                "{what}: {host} mounted read-only at the agent's {key}"
            );
        }
        let state_dir = string_at(&config, "state_dir");
        let state = agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == state_dir)
            .map(|m| m.name.clone())
            .unwrap_or_else(|| panic!("{what}: nothing mounted at the state_dir {state_dir}"));
        assert!(
            volume_named(&pod, &state).host_path.is_some(),
            "{what}: the state directory is not on the node"
        );
        for v in pod
            .volumes
            .iter()
            .flatten()
            .filter(|v| v.host_path.is_some())
        {
            if let Some((path, read_only)) = mount_of(agent, &v.name) {
                assert!(
                    read_only || v.name == state,
                    "{what}: hostPath {} mounted writable at {path}",
                    v.name
                );
            }
        }

        // A service-account token, mounted explicitly, for the kubelet only.
        assert_eq!(pod.automount_service_account_token, Some(false), "{what}");
        assert_eq!(pod.service_account_name.as_deref(), Some(AGENT), "{what}");
        let sa = r.one::<ServiceAccount>(AGENT);
        assert_eq!(sa.automount_service_account_token, Some(false), "{what}");
        let token = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| {
                v.projected.as_ref().is_some_and(|p| {
                    p.sources
                        .iter()
                        .flatten()
                        .any(|s| s.service_account_token.is_some())
                })
            })
            .unwrap_or_else(|| panic!("{what}: no projected service-account token"));
        assert_eq!(
            mount_of(agent, &token.name),
            Some((
                "/var/run/secrets/kubernetes.io/serviceaccount".to_string(),
                true
            )),
            "{what}: token mount"
        );
    }
}

#[test]
fn agent_certificates_name_their_cluster_namespace_and_pod() {
    for r in renderings() {
        let pod = r.agent_pod();
        let agent = container(&pod, "agent");
        let what = format!("{}: DaemonSet {AGENT}", r.name);
        let config = r.agent_config();
        let (tls_dir, ca) = dir_and_file(string_at(&config, "aggregator.tls.ca"));
        let (cert_dir, cert) = dir_and_file(string_at(&config, "aggregator.tls.cert"));
        let (key_dir, key) = dir_and_file(string_at(&config, "aggregator.tls.key"));
        assert!(
            tls_dir == cert_dir && tls_dir == key_dir,
            "{what}: one TLS dir"
        );
        assert_eq!(
            mount_of(agent, "tls"),
            Some((tls_dir.to_string(), true)),
            "{what}: the tls volume is where agent.toml looks"
        );
        let tls = volume_named(&pod, "tls");
        if r.name == "overlays/static-certs" {
            assert!(tls.csi.is_none(), "{what}: CSI left in");
            let secret = tls.secret.as_ref().expect("the agents' Secret");
            assert_eq!(secret.secret_name.as_deref(), Some("infrawatch-agent-tls"));
            continue;
        }
        let csi = tls
            .csi
            .as_ref()
            .unwrap_or_else(|| panic!("{what}: no CSI volume"));
        assert_eq!(csi.driver, "csi.cert-manager.io", "{what}");
        assert_eq!(csi.read_only, Some(true), "{what}");
        let attrs = csi.volume_attributes.clone().unwrap_or_default();
        let mut problems = Vec::new();
        for name in attrs.keys() {
            let known = name
                .strip_prefix("csi.cert-manager.io/")
                .is_some_and(|a| CSI_ATTRIBUTES.contains(&a));
            if !known {
                problems.push(format!("unknown CSI attribute {name:?}"));
            }
        }
        assert_no_problems(&what, &problems);
        let attr = |a: &str| {
            attrs
                .get(&format!("csi.cert-manager.io/{a}"))
                .map(String::as_str)
                .unwrap_or_else(|| panic!("{what}: no csi.cert-manager.io/{a}"))
        };

        // spiffe://infrawatch/agent/k8s/<cluster>/<namespace>/<pod>, exactly.
        let cluster = r.cluster_name();
        assert!(
            !cluster.is_empty()
                && cluster
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'),
            "{what}: cluster name {cluster:?}"
        );
        assert_eq!(
            attr("uri-sans"),
            format!("spiffe://infrawatch/agent/k8s/{cluster}/${{POD_NAMESPACE}}/${{POD_NAME}}"),
            "{what}: the agent's URI"
        );
        assert_eq!(
            attr("uri-sans").split('/').collect::<Vec<_>>(),
            [
                "spiffe:",
                "",
                "infrawatch",
                "agent",
                "k8s",
                cluster.as_str(),
                "${POD_NAMESPACE}",
                "${POD_NAME}"
            ],
        );
        assert_eq!(attr("ca-file"), ca, "{what}: ca-file");
        assert_eq!(attr("certificate-file"), cert, "{what}: certificate-file");
        assert_eq!(attr("privatekey-file"), key, "{what}: privatekey-file");
        for d in ["duration", "renew-before"] {
            assert!(is_go_duration(attr(d)), "{what}: {d} {:?}", attr(d));
        }
        let usages: Vec<KeyUsage> = attr("key-usages")
            .split(',')
            .map(|u| {
                serde_json::from_value(Value::String(u.trim().to_string()))
                    .unwrap_or_else(|e| panic!("{what}: key usage {u:?}: {e}"))
            })
            .collect();
        assert!(usages.contains(&KeyUsage::ClientAuth), "{what}: {usages:?}");
        assert!(!usages.contains(&KeyUsage::CertSign), "{what}: {usages:?}");
        assert!(!attrs.contains_key("csi.cert-manager.io/is-ca"), "{what}");
        assert_eq!(attr("issuer-kind"), "Issuer", "{what}");

        // In the overlay the Issuer is there, and signs with the CA the
        // aggregator trusts.
        if r.name == "overlays/cert-manager" {
            let issuer = r
                .issuers()
                .into_iter()
                .find(|i| i.metadata.name.as_deref() == Some(attr("issuer-name")))
                .unwrap_or_else(|| panic!("{what}: no Issuer {}", attr("issuer-name")));
            let ca = issuer.spec.ca.expect("a CA Issuer");
            let ca_cert = r
                .certificates()
                .into_iter()
                .find(|c| c.spec.secret_name == ca.secret_name)
                .expect("the CA's Certificate");
            assert_eq!(ca_cert.spec.is_ca, Some(true));
        }
    }
}

#[test]
fn the_cluster_name_of_the_overlay_reaches_the_agent_certificates() {
    // A copy of packaging/kubernetes with another cluster name in the overlay.
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&kubernetes_dir(), dir.path());
    let kustomization = dir.path().join("overlays/cert-manager/kustomization.yaml");
    let text = std::fs::read_to_string(&kustomization).unwrap();
    assert!(text.contains("- cluster-name=default\n"), "{text}");
    std::fs::write(
        &kustomization,
        text.replace("- cluster-name=default\n", "- cluster-name=prod-eu.1\n"),
    )
    .unwrap();
    let r = Rendering::render(
        "overlays/cert-manager",
        &dir.path().join("overlays/cert-manager"),
    );
    assert_no_problems("the changed overlay", &check_all(&r.docs));
    assert_eq!(r.cluster_name(), "prod-eu.1");
    let tls = volume_named(&r.agent_pod(), "tls").clone();
    let attrs = tls
        .csi
        .and_then(|c| c.volume_attributes)
        .unwrap_or_default();
    assert_eq!(
        attrs["csi.cert-manager.io/uri-sans"],
        "spiffe://infrawatch/agent/k8s/prod-eu.1/${POD_NAMESPACE}/${POD_NAME}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[test]
fn references_between_the_objects_resolve() {
    for r in renderings() {
        let deployment = r.one::<Deployment>(AGGREGATOR);
        let daemon_set = r.one::<DaemonSet>(AGENT);
        let agg_labels = template_labels_of_deployment(&deployment);
        let agent_labels = template_labels_of_daemon_set(&daemon_set);
        let agg_pod = r.aggregator_pod();
        let agent_pod = r.agent_pod();
        let aggregator = container(&agg_pod, "aggregator");
        let name = r.name;

        // Selectors select their own pods, and only those.
        let spec = deployment.spec.as_ref().unwrap();
        assert!(
            selects(&spec.selector, &agg_labels),
            "{name}: Deployment selector"
        );
        assert!(
            !selects(&spec.selector, &agent_labels),
            "{name}: Deployment selector"
        );
        let ds_spec = daemon_set.spec.as_ref().unwrap();
        assert!(
            selects(&ds_spec.selector, &agent_labels),
            "{name}: DaemonSet selector"
        );
        assert!(
            !selects(&ds_spec.selector, &agg_labels),
            "{name}: DaemonSet selector"
        );

        // The Deployment: two replicas rolled one at a time, spread over nodes.
        assert_eq!(spec.replicas, Some(2), "{name}: replicas");
        let strategy = spec.strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"), "{name}");
        let anti = agg_pod
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .and_then(|a| {
                a.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .unwrap_or_else(|| panic!("{name}: no preferred pod anti-affinity"));
        assert!(
            anti.iter().any(|t| t
                .pod_affinity_term
                .label_selector
                .as_ref()
                .is_some_and(|s| selects(s, &agg_labels))),
            "{name}: the anti-affinity does not select the aggregator's pods"
        );

        // Probes: the REST port's /healthz and /readyz.
        let http = named_port(aggregator, "http").expect("REST port");
        let grpc = named_port(aggregator, "grpc").expect("gRPC port");
        for (probe, path) in [
            (&aggregator.startup_probe, "/healthz"),
            (&aggregator.liveness_probe, "/healthz"),
            (&aggregator.readiness_probe, "/readyz"),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{name}: a probe is not an HTTP GET"));
            assert_eq!(get.path.as_deref(), Some(path), "{name}");
            assert_eq!(get.port, IntOrString::String("http".into()), "{name}");
        }

        // The Service: both ports, to named container ports of the aggregator.
        let service = r.one::<Service>(AGGREGATOR);
        let svc = service.spec.as_ref().unwrap();
        let selector = LabelSelector {
            match_labels: svc.selector.clone(),
            ..Default::default()
        };
        assert!(selects(&selector, &agg_labels), "{name}: Service selector");
        let ports: BTreeMap<String, (i32, Option<IntOrString>)> = svc
            .ports
            .iter()
            .flatten()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    (p.port, p.target_port.clone()),
                )
            })
            .collect();
        assert_eq!(
            ports,
            BTreeMap::from([
                (
                    "grpc".to_string(),
                    (grpc, Some(IntOrString::String("grpc".into())))
                ),
                (
                    "http".to_string(),
                    (http, Some(IntOrString::String("http".into())))
                ),
            ]),
            "{name}: Service ports"
        );

        // The PodDisruptionBudget and the autoscaler.
        let pdb = r.one::<PodDisruptionBudget>(AGGREGATOR).spec.unwrap();
        assert_eq!(pdb.min_available, Some(IntOrString::Int(1)), "{name}");
        assert!(
            selects(pdb.selector.as_ref().unwrap(), &agg_labels),
            "{name}: PDB"
        );
        let hpa = r.one::<HorizontalPodAutoscaler>(AGGREGATOR).spec.unwrap();
        assert_eq!(
            (
                hpa.scale_target_ref.kind.as_str(),
                hpa.scale_target_ref.name.as_str()
            ),
            ("Deployment", AGGREGATOR),
            "{name}: HPA target"
        );
        assert_eq!(hpa.min_replicas, spec.replicas, "{name}: HPA minimum");
        assert!(hpa.max_replicas > 2, "{name}: HPA maximum");
        let cpu = hpa
            .metrics
            .iter()
            .flatten()
            .filter_map(|m| m.resource.as_ref())
            .find(|m| m.name == "cpu")
            .unwrap_or_else(|| panic!("{name}: the HPA has no CPU metric"));
        assert_eq!(cpu.target.type_, "Utilization", "{name}");

        // NetworkPolicies: the aggregator's two ports only, nothing into agents.
        let np = r.one::<NetworkPolicy>(AGGREGATOR).spec.unwrap();
        assert!(
            np.pod_selector
                .as_ref()
                .is_some_and(|s| selects(s, &agg_labels)),
            "{name}"
        );
        assert_eq!(
            np.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        let allowed: BTreeSet<String> = np
            .ingress
            .iter()
            .flatten()
            .flat_map(|rule| {
                assert!(
                    rule.ports.is_some(),
                    "{name}: an ingress rule without ports"
                );
                rule.ports.iter().flatten()
            })
            .map(|p| match p.port.clone() {
                Some(IntOrString::String(s)) => s,
                other => panic!("{name}: port {other:?} is not a named port"),
            })
            .collect();
        assert_eq!(
            allowed,
            BTreeSet::from(["grpc".to_string(), "http".to_string()]),
            "{name}: aggregator ingress"
        );
        let np = r.one::<NetworkPolicy>(AGENT).spec.unwrap();
        assert!(
            np.pod_selector
                .as_ref()
                .is_some_and(|s| selects(s, &agent_labels)),
            "{name}"
        );
        assert_eq!(
            np.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        assert!(
            np.ingress.unwrap_or_default().is_empty(),
            "{name}: agent ingress"
        );

        // ServiceAccounts and ConfigMaps exist; Secrets are made by cert-manager
        // here or created beforehand (README, Running on Kubernetes).
        let mut beforehand = vec!["infrawatch-storage"];
        if r.name != "overlays/cert-manager" {
            beforehand.extend(["infrawatch-aggregator-tls", "infrawatch-agent-tls"]);
        }
        let issued: BTreeSet<String> = r
            .certificates()
            .into_iter()
            .map(|c| c.spec.secret_name)
            .collect();
        for pod in [&agg_pod, &agent_pod] {
            let sa = pod.service_account_name.as_deref().unwrap_or("default");
            assert!(
                r.find::<ServiceAccount>(sa).is_some(),
                "{name}: no ServiceAccount {sa}"
            );
            for v in pod.volumes.iter().flatten() {
                if let Some(cm) = &v.config_map {
                    assert!(
                        r.find::<ConfigMap>(&cm.name).is_some(),
                        "{name}: no ConfigMap {}",
                        cm.name
                    );
                }
                if let Some(secret) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) {
                    assert!(
                        issued.contains(secret) || beforehand.contains(&secret),
                        "{name}: nothing makes Secret {secret}"
                    );
                }
            }
            for c in &pod.containers {
                for e in c.env.iter().flatten() {
                    let Some(s) = e
                        .value_from
                        .as_ref()
                        .and_then(|v| v.secret_key_ref.as_ref())
                    else {
                        continue;
                    };
                    assert!(
                        issued.contains(&s.name) || beforehand.contains(&s.name.as_str()),
                        "{name}: nothing makes Secret {}",
                        s.name
                    );
                }
                for m in c.volume_mounts.iter().flatten() {
                    assert!(
                        pod.volumes.iter().flatten().any(|v| v.name == m.name),
                        "{name}: container {} mounts a missing volume {}",
                        c.name,
                        m.name
                    );
                }
            }
        }

        // The agents reach the Service by a name in the aggregator's certificate.
        let agent_config = r.agent_config();
        let endpoint = agent_config["aggregator"]["endpoints"][0]
            .as_str()
            .expect("an endpoint");
        assert_eq!(
            endpoint,
            format!("https://{AGGREGATOR}:{}", grpc),
            "{name}: the agents' endpoint is the Service"
        );
        let server_name = string_at(&agent_config, "aggregator.server_name");
        if r.name == "overlays/cert-manager" {
            check_cert_manager(r, server_name);
        }
    }
}

/// The Issuers and Certificates of the cert-manager overlay.
fn check_cert_manager(r: &Rendering, server_name: &str) {
    let issuers = r.issuers();
    let certificates = r.certificates();
    for issuer in &issuers {
        let n = [issuer.spec.self_signed.is_some(), issuer.spec.ca.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        assert_eq!(
            n, 1,
            "Issuer {:?}: one kind of issuer",
            issuer.metadata.name
        );
    }
    for cert in &certificates {
        let what = format!("Certificate {:?}", cert.metadata.name);
        let issuer = &cert.spec.issuer_ref;
        assert_ne!(issuer.kind, Some(IssuerKind::ClusterIssuer), "{what}");
        assert!(
            issuers
                .iter()
                .any(|i| i.metadata.name.as_deref() == Some(issuer.name.as_str())),
            "{what}: no Issuer {}",
            issuer.name
        );
        for d in [&cert.spec.duration, &cert.spec.renew_before]
            .into_iter()
            .flatten()
        {
            assert!(is_go_duration(d), "{what}: duration {d:?}");
        }
    }
    // The CA Issuer signs with a CA Certificate.
    for ca in issuers.iter().filter_map(|i| i.spec.ca.as_ref()) {
        assert!(
            certificates
                .iter()
                .any(|c| c.spec.secret_name == ca.secret_name && c.spec.is_ca == Some(true)),
            "no CA Certificate writes {}",
            ca.secret_name
        );
    }
    // The aggregator's certificate: the Secret it mounts, the name agents check.
    let tls = volume_named(&r.aggregator_pod(), "tls")
        .secret
        .as_ref()
        .and_then(|s| s.secret_name.clone())
        .expect("the aggregator's TLS Secret");
    let server = certificates
        .iter()
        .find(|c| c.spec.secret_name == tls)
        .unwrap_or_else(|| panic!("no Certificate writes {tls}"));
    assert!(
        server
            .spec
            .dns_names
            .iter()
            .flatten()
            .any(|d| d == server_name),
        "the aggregator's certificate does not name {server_name:?}"
    );
    let usages = server.spec.usages.clone().unwrap_or_default();
    assert!(usages.contains(&KeyUsage::ServerAuth), "{usages:?}");
    assert_ne!(server.spec.is_ca, Some(true));
    // The aggregator's issuer is the agents' issuer: it trusts their CA.
    let agent_issuer = volume_named(&r.agent_pod(), "tls")
        .csi
        .as_ref()
        .and_then(|c| c.volume_attributes.as_ref())
        .and_then(|a| a.get("csi.cert-manager.io/issuer-name").cloned())
        .expect("the agents' issuer");
    assert_eq!(server.spec.issuer_ref.name, agent_issuer);
    // Client certificates name a reader or admin role, never an agent's.
    for cert in &certificates {
        for uri in cert.spec.uris.iter().flatten() {
            assert!(
                uri.starts_with("spiffe://infrawatch/reader/")
                    || uri.starts_with("spiffe://infrawatch/admin/"),
                "Certificate {:?}: {uri}",
                cert.metadata.name
            );
        }
    }
}

#[test]
fn the_aggregator_config_loads_and_needs_only_rest_tokens() {
    for r in renderings() {
        let pod = r.aggregator_pod();
        let aggregator = container(&pod, "aggregator");
        let (config_path, _) = mount_of(aggregator, "config").expect("config mount");
        assert!(
            aggregator
                .command
                .iter()
                .flatten()
                .any(|a| *a == config_path),
            "{}: the command does not read {config_path}",
            r.name
        );
        let text = r.config_file(&pod, "config", "aggregator.toml");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("aggregator.toml");
        std::fs::write(&file, &text).unwrap();
        // The pod's INFRAWATCH_AGGREGATOR_* variables, read as the binary reads
        // them (`__` between levels; --set values parse like variables).
        let overrides: Vec<String> = r
            .environment(aggregator)
            .into_iter()
            .filter_map(|(name, value)| {
                let key = name.strip_prefix("INFRAWATCH_AGGREGATOR_")?;
                Some(format!("{}={value}", key.to_lowercase().replace("__", ".")))
            })
            .collect();
        assert!(
            overrides.iter().any(|o| o.starts_with("storage.url=")),
            "{}: no storage.url in the environment",
            r.name
        );
        let mut config: AggregatorConfig = load(ConfigSources {
            file: Some(&file),
            env_prefix: "INFRAWATCH_MANIFESTS_TEST_UNSET_",
            overrides: &overrides,
        })
        .unwrap_or_else(|e| panic!("{}: aggregator.toml: {e}", r.name));
        let what = format!("{}: aggregator.toml", r.name);
        assert_eq!(
            i32::from(config.grpc.listen.port()),
            named_port(aggregator, "grpc").unwrap(),
            "{what}: grpc.listen"
        );
        assert_eq!(
            i32::from(config.rest.listen.port()),
            named_port(aggregator, "http").unwrap(),
            "{what}: rest.listen"
        );
        assert!(
            config.rest.listen.ip().is_unspecified(),
            "{what}: rest.listen"
        );
        assert_eq!(config.grpc.trust_domain, "infrawatch", "{what}");
        assert_eq!(config.cluster.replica_id, "infrawatch-pod-0", "{what}");
        // The Kubernetes source watches this cluster in-cluster, under the
        // name in the agents' certificates.
        let json = serde_json::to_value(&config).unwrap();
        let clusters = json["kubernetes"]["clusters"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            clusters.len(),
            1,
            "{what}: kubernetes.clusters {clusters:?}"
        );
        assert_eq!(clusters[0]["name"], r.cluster_name().as_str(), "{what}");
        assert!(is_empty(&clusters[0]["kubeconfig"]), "{what}: in-cluster");
        assert_eq!(
            config.grpc.machine_binding,
            MachineBinding::PerIdentity,
            "{what}"
        );
        let (tls_dir, _) = mount_of(aggregator, "tls").expect("tls mount");
        for f in [
            &config.grpc.tls.ca,
            &config.grpc.tls.cert,
            &config.grpc.tls.key,
        ] {
            assert_eq!(
                f.parent(),
                Some(Path::new(&tls_dir)),
                "{what}: {} is not in the tls volume",
                f.display()
            );
        }
        // As shipped, only the token is missing (the aggregator refuses to
        // start without one: REST listens on every address of the pod).
        let problems = config.validate().expect_err("no REST token is shipped").0;
        assert_eq!(
            problems
                .iter()
                .map(|p| p.field.as_str())
                .collect::<Vec<_>>(),
            ["rest.tokens"],
            "{what}: {problems:?}"
        );
        config.rest.tokens.push(TokenConfig {
            name: "grafana".into(),
            role: Role::Reader,
            hash: TokenHash::new("a-token").unwrap().to_string(),
            clusters: Vec::new(),
            namespaces: Vec::new(),
        });
        config
            .validate()
            .unwrap_or_else(|e| panic!("{what} with a token: {e}"));
    }
}

#[test]
fn the_agent_config_is_valid_for_the_agent() {
    let bin = infrawatch_e2e::binary("infrawatch-agent");
    for r in renderings() {
        let pod = r.agent_pod();
        let agent = container(&pod, "agent");
        let (config_path, _) = mount_of(agent, "config").expect("config mount");
        assert!(
            agent.command.iter().flatten().any(|a| *a == config_path),
            "{}: the command does not read {config_path}",
            r.name
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.toml");
        std::fs::write(&file, r.config_file(&pod, "config", "agent.toml")).unwrap();
        // What the pod's volumes provide: certificate files and a state directory.
        let pki = infrawatch_e2e::Pki::new(&dir.path().join("pki"), &["k8s-agents"]).unwrap();
        let tls = pki.client("k8s-agents");
        let state = dir.path().join("state");
        // The pod's environment too (INFRAWATCH_AGENT_NAME, NODE_NAME, ...).
        let output = Command::new(&bin)
            .envs(r.environment(agent))
            .arg("--config")
            .arg(&file)
            .arg("--set")
            .arg(format!("aggregator.tls.ca={}", tls.ca.display()))
            .arg("--set")
            .arg(format!("aggregator.tls.cert={}", tls.cert.display()))
            .arg("--set")
            .arg(format!("aggregator.tls.key={}", tls.key.display()))
            .arg("--set")
            .arg(format!("state_dir={}", state.display()))
            .arg("validate")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: infrawatch-agent validate: {}",
            r.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

// ---------------------------------------------------------------------------
// The validator itself: typos must fail.

/// The problems of every document of `yaml`.
fn problems_of(yaml: &str) -> Vec<String> {
    check_all(&documents(yaml).unwrap())
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
        - name: web
          image: web:1
          ports:
            - {name: http, containerPort: 8080}
          resources:
            requests: {cpu: 1, memory: 64Mi}
          readinessProbe:
            httpGet: {path: /readyz, port: http}
      volumes:
        - name: tmp
          emptyDir: {}
"#;

#[test]
fn the_validator_accepts_a_correct_object() {
    assert_no_problems("a correct Deployment", &problems_of(DEPLOYMENT));
}

#[test]
fn the_validator_rejects_unknown_fields_naming_the_object_and_path() {
    let replica = DEPLOYMENT.replace("  replicas: 2", "  replica: 2");
    assert_eq!(
        problems_of(&replica),
        ["Deployment web: unknown field `spec.replica`"]
    );
    let containres = DEPLOYMENT.replace("      containers:", "      containres:");
    assert_eq!(
        problems_of(&containres),
        ["Deployment web: unknown field `spec.template.spec.containres`"]
    );
    // Deep inside a list, next to known fields.
    let deep = DEPLOYMENT.replace(
        "          image: web:1",
        "          image: web:1\n          imagePullPolicyy: Always",
    );
    assert_eq!(
        problems_of(&deep),
        ["Deployment web: unknown field `spec.template.spec.containers[0].imagePullPolicyy`"]
    );
    let metadata = DEPLOYMENT.replace("  name: web", "  name: web\n  labells: {a: b}");
    assert_eq!(
        problems_of(&metadata),
        ["Deployment web: unknown field `metadata.labells`"]
    );
    let wrong_type = DEPLOYMENT.replace("  replicas: 2", "  replicas: two");
    let problems = problems_of(&wrong_type);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("Deployment web: "), "{problems:?}");
}

#[test]
fn the_validator_rejects_typos_in_a_rendered_object() {
    let base = renderings()
        .iter()
        .find(|r| r.name == "base")
        .expect("base");
    let mut docs = base.docs.clone();
    let ds = docs.iter_mut().find(|d| d["kind"] == "DaemonSet").unwrap();
    ds["spec"]["template"]["spec"]["tolerations"][0]["operater"] = Value::from("Exists");
    assert_eq!(
        check_all(&docs),
        [format!(
            "DaemonSet {AGENT}: unknown field `spec.template.spec.tolerations[0].operater`"
        )]
    );
}

#[test]
fn the_validator_rejects_unknown_kinds_and_checks_cert_manager_fields() {
    let unknown = "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n";
    let problems = problems_of(unknown);
    assert_eq!(problems.len(), 1);
    assert!(
        problems[0].contains("unknown kind \"Widget\""),
        "{problems:?}"
    );
    // A known kind of another version is not that kind.
    let old = "apiVersion: autoscaling/v1\nkind: HorizontalPodAutoscaler\nmetadata: {name: h}\n";
    assert_eq!(problems_of(old).len(), 1);

    let certificate = r#"
apiVersion: cert-manager.io/v1
kind: Certificate
metadata: {name: ca}
spec:
  isCA: true
  secretName: ca
  issuerRef: {name: selfsigned, kind: Issuer}
  usages: [cert sign]
"#;
    assert_no_problems("a Certificate", &problems_of(certificate));
    let typo = certificate.replace("isCA", "isCa");
    let problems = problems_of(&typo);
    assert!(
        problems.len() == 1 && problems[0].contains("unknown field `isCa`"),
        "{problems:?}"
    );
    let usage = certificate.replace("cert sign", "cert-sign");
    assert_eq!(problems_of(&usage).len(), 1);
    let meta = certificate.replace("metadata: {name: ca}", "metadata: {name: ca, namespce: x}");
    assert_eq!(
        problems_of(&meta),
        ["Certificate ca: unknown field `metadata.namespce`"]
    );
    let issuer = "apiVersion: cert-manager.io/v1\nkind: Issuer\nmetadata: {name: i}\n\
                  spec:\n  selfSigned: {}\n";
    assert_no_problems("an Issuer", &problems_of(issuer));
    let typo = issuer.replace("selfSigned", "selfsigned");
    assert_eq!(problems_of(&typo).len(), 1);
}

#[test]
fn numbers_and_strings_of_the_same_text_are_the_same_value() {
    // Quantities and IntOrString keep a number or a string as given; a
    // Quantity written as a number comes back as a string.
    assert!(same_scalar(&Value::from(1), &Value::from("1")));
    assert!(same_scalar(&Value::from(8080), &Value::from(8080)));
    assert!(!same_scalar(&Value::from(1), &Value::from("2")));
    assert!(!same_scalar(&Value::from(true), &Value::from("true")));
    assert!(is_go_duration("24h") && is_go_duration("1h30m") && is_go_duration("87600h"));
    assert!(!is_go_duration("24") && !is_go_duration("1d") && !is_go_duration(""));
}
