{{- define "lokal.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "lokal.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "lokal.labels" -}}
{{ include "lokal.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "lokal.claimName" -}}
{{- default (printf "%s-models" (include "lokal.fullname" .)) .Values.persistence.existingClaim -}}
{{- end -}}

{{- define "lokal.keysSecret" -}}
{{- default (printf "%s-keys" (include "lokal.fullname" .)) .Values.keys.existingSecret -}}
{{- end -}}
