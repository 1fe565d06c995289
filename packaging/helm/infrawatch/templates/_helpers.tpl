{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "infrawatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name; the components append -agent or -aggregator. */}}
{{- define "infrawatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "infrawatch.agent.fullname" -}}
{{- printf "%s-agent" (include "infrawatch.fullname" .) -}}
{{- end -}}

{{- define "infrawatch.aggregator.fullname" -}}
{{- printf "%s-aggregator" (include "infrawatch.fullname" .) -}}
{{- end -}}

{{- define "infrawatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "infrawatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: infrawatch
{{- end -}}

{{- define "infrawatch.agent.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infrawatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "infrawatch.aggregator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "infrawatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: aggregator
{{- end -}}

{{- define "infrawatch.agent.labels" -}}
{{ include "infrawatch.labels" . }}
app.kubernetes.io/component: agent
{{- end -}}

{{- define "infrawatch.aggregator.labels" -}}
{{ include "infrawatch.labels" . }}
app.kubernetes.io/component: aggregator
{{- end -}}

{{- define "infrawatch.aggregator.serviceAccountName" -}}
{{- if .Values.aggregator.serviceAccount.create -}}
{{- default (include "infrawatch.aggregator.fullname" .) .Values.aggregator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.aggregator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "infrawatch.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag | toString) -}}
{{- end -}}

{{/* DNS name of the aggregator Service inside the cluster. */}}
{{- define "infrawatch.aggregator.host" -}}
{{- printf "%s.%s.svc" (include "infrawatch.aggregator.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* A list of strings as a TOML array. */}}
{{- define "infrawatch.tomlStrings" -}}
[{{ range $i, $s := . }}{{ if $i }}, {{ end }}{{ $s | toString | toJson }}{{ end }}]
{{- end -}}
