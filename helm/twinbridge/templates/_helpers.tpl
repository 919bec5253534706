{{/* Names, labels and the pieces every workload shares. */}}

{{- define "twinbridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "twinbridge.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* <fullname>-<component>; the fullname is cut so that StatefulSet pod names stay valid. */}}
{{- define "twinbridge.componentName" -}}
{{- printf "%s-%s" (include "twinbridge.fullname" .root | trunc 40 | trimSuffix "-") .component -}}
{{- end -}}

{{- define "twinbridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "twinbridge.labels" -}}
helm.sh/chart: {{ include "twinbridge.chart" . }}
app.kubernetes.io/name: {{ include "twinbridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: twinbridge
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: {root, component}. */}}
{{- define "twinbridge.componentLabels" -}}
{{ include "twinbridge.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "twinbridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "twinbridge.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "twinbridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "twinbridge.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "twinbridge.schedulerServiceAccountName" -}}
{{- if .Values.scheduler.serviceAccount.create -}}
{{- default (include "twinbridge.componentName" (dict "root" . "component" "scheduler")) .Values.scheduler.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.scheduler.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "twinbridge.secretName" -}}
{{- default (include "twinbridge.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "twinbridge.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Where the ConfigMap's TOML and the secret files appear in the pods. */}}
{{- define "twinbridge.configDir" -}}/etc/twinbridge{{- end -}}
{{- define "twinbridge.secretDir" -}}/var/run/secrets/twinbridge{{- end -}}
{{- define "twinbridge.tlsDir" -}}/etc/twinbridge/tls{{- end -}}

{{/*
The Secret keys a component reads, as a list of {key, file, env}: `file` is the file name under
the secret directory, `env` the `*_FILE` override that points twinbridge at it. Only the keys the
component needs are mounted into its pods.
*/}}
{{- define "twinbridge.secretFiles" -}}
{{- $k := .root.Values.secrets.keys -}}
{{- $files := list -}}
{{- if has .component (list "scheduler" "worker") -}}
{{- if not $k.appKey -}}{{- fail "secrets.keys.appKey: the ThingWorx application key is required (scheduler and workers)" -}}{{- end -}}
{{- $files = append $files (dict "key" $k.appKey "file" "app-key" "env" "TWINBRIDGE_PLATFORM__APP_KEY_FILE") -}}
{{- end -}}
{{- if $k.redisPassword -}}
{{- $files = append $files (dict "key" $k.redisPassword "file" "redis-password" "env" "TWINBRIDGE_STORE__PASSWORD_FILE") -}}
{{- end -}}
{{- if and (eq .component "scheduler") $k.adminToken -}}
{{- $files = append $files (dict "key" $k.adminToken "file" "admin-token" "env" "TWINBRIDGE_SCHEDULER__ADMIN_TOKEN_FILE") -}}
{{- end -}}
{{- if and (eq .component "router") $k.ingestToken -}}
{{- $files = append $files (dict "key" $k.ingestToken "file" "ingest-token" "env" "TWINBRIDGE_ROUTER__INGEST_TOKEN_FILE") -}}
{{- end -}}
{{- toJson $files -}}
{{- end -}}

{{/* TLS Secrets a component mounts: list of {name, secret, dir, env: {file in secret: env var}}. */}}
{{- define "twinbridge.tlsMounts" -}}
{{- $t := .root.Values.tls -}}
{{- $dir := include "twinbridge.tlsDir" .root -}}
{{- $mounts := list -}}
{{- if and (has .component (list "scheduler" "worker")) $t.platformCa.existingSecret -}}
{{- $mounts = append $mounts (dict "name" "tls-platform-ca" "secret" $t.platformCa.existingSecret "dir" (printf "%s/platform" $dir) "env" (dict "ca.crt" "TWINBRIDGE_PLATFORM__CA_FILE")) -}}
{{- end -}}
{{- if and (eq .component "router") $t.mqtt.existingSecret -}}
{{- $mounts = append $mounts (dict "name" "tls-mqtt" "secret" $t.mqtt.existingSecret "dir" (printf "%s/mqtt" $dir) "env" (dict "ca.crt" "TWINBRIDGE_ROUTER__MQTT__CA_FILE" "tls.crt" "TWINBRIDGE_ROUTER__MQTT__CERT_FILE" "tls.key" "TWINBRIDGE_ROUTER__MQTT__KEY_FILE")) -}}
{{- end -}}
{{- if and (eq .component "worker") $t.downlink.existingSecret -}}
{{- $mounts = append $mounts (dict "name" "tls-downlink" "secret" $t.downlink.existingSecret "dir" (printf "%s/downlink" $dir) "env" (dict "ca.crt" "TWINBRIDGE_WORKER__DOWNLINK__CA_FILE" "tls.crt" "TWINBRIDGE_WORKER__DOWNLINK__CERT_FILE" "tls.key" "TWINBRIDGE_WORKER__DOWNLINK__KEY_FILE")) -}}
{{- end -}}
{{- toJson $mounts -}}
{{- end -}}

{{/* Security context of every pod and container: the image's fixed non-root user. */}}
{{- define "twinbridge.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "twinbridge.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
The pod template of one component: {root, component, values, env (extra EnvVar list)}. Every pod
reads the ConfigMap's TOML (TWINBRIDGE_CONFIG) and only the secrets its component needs.
*/}}
{{- define "twinbridge.podTemplate" -}}
{{- $root := .root -}}
{{- $v := .values -}}
{{- $secretFiles := include "twinbridge.secretFiles" . | fromJsonArray -}}
{{- $tlsMounts := include "twinbridge.tlsMounts" . | fromJsonArray -}}
{{- $k := $root.Values.secrets.keys -}}
metadata:
  labels:
    {{- include "twinbridge.selectorLabels" . | nindent 4 }}
    app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
    app.kubernetes.io/part-of: twinbridge
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- if eq .component "scheduler" }}
  serviceAccountName: {{ include "twinbridge.schedulerServiceAccountName" $root }}
  # The kubernetes launcher calls the API server with this token.
  automountServiceAccountToken: {{ eq $root.Values.worker.replicasOwner "scheduler" }}
  {{- else }}
  serviceAccountName: {{ include "twinbridge.serviceAccountName" $root }}
  # Routers and workers never call the Kubernetes API (IRSA mounts its own web identity token).
  automountServiceAccountToken: false
  {{- end }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  securityContext:
    {{- include "twinbridge.podSecurityContext" $root | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "twinbridge.image" $root }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        - {{ .component }}
      env:
        - name: TWINBRIDGE_CONFIG
          value: {{ include "twinbridge.configDir" $root }}/twinbridge.toml
        - name: POD_NAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- range $secretFiles }}
        - name: {{ .env }}
          value: {{ include "twinbridge.secretDir" $root }}/{{ .file }}
        {{- end }}
        {{- range $tlsMounts }}
        {{- $dir := .dir }}
        {{- range $file, $env := .env }}
        - name: {{ $env }}
          value: {{ $dir }}/{{ $file }}
        {{- end }}
        {{- end }}
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ $v.port }}
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 2
        failureThreshold: 30
      livenessProbe:
        httpGet:
          path: /healthz
          port: http
        periodSeconds: 10
        timeoutSeconds: 3
        failureThreshold: 3
      readinessProbe:
        httpGet:
          path: /readyz
          port: http
        periodSeconds: 5
        timeoutSeconds: 3
        failureThreshold: 2
      resources:
        {{- toYaml $v.resources | nindent 8 }}
      securityContext:
        {{- include "twinbridge.containerSecurityContext" $root | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: {{ include "twinbridge.configDir" $root }}/twinbridge.toml
          subPath: twinbridge.toml
          readOnly: true
        {{- if $secretFiles }}
        - name: secrets
          mountPath: {{ include "twinbridge.secretDir" $root }}
          readOnly: true
        {{- end }}
        {{- range $tlsMounts }}
        - name: {{ .name }}
          mountPath: {{ .dir }}
          readOnly: true
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "twinbridge.fullname" $root }}
    {{- if $secretFiles }}
    - name: secrets
      secret:
        secretName: {{ include "twinbridge.secretName" $root }}
        defaultMode: 0440
        items:
          {{- range $secretFiles }}
          - key: {{ .key }}
            path: {{ .file }}
          {{- end }}
    {{- end }}
    {{- range $tlsMounts }}
    - name: {{ .name }}
      secret:
        secretName: {{ .secret }}
        defaultMode: 0440
        items:
          {{- range $file, $env := .env }}
          - key: {{ $file }}
            path: {{ $file }}
          {{- end }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
