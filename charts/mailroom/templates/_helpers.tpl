{{- define "mailroom.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mailroom.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mailroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mailroom.labels" -}}
{{ include "mailroom.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "mailroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mailroom.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The rules for the watched resources, shared by the ClusterRole and the per-namespace Roles. */}}
{{- define "mailroom.rules" -}}
- apiGroups: ["mailroom.dev"]
  resources: ["incomingemailservers", "outgoingemailservers"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["mailroom.dev"]
  resources: ["incomingemailservers/status", "outgoingemailservers/status"]
  verbs: ["get", "patch"]
- apiGroups: ["mailroom.dev"]
  resources: ["incomingemailservers/finalizers", "outgoingemailservers/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["secrets"]
  {{- if eq (toString .Values.rbac.secretUpdate) "all" }}
  verbs: ["get", "list", "watch", "update"]
  {{- else }}
  verbs: ["get", "list", "watch"]
  {{- end }}
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
