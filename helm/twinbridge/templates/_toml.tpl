{{/*
A TOML writer for the configuration. Helm's `toToml` writes every YAML number as a float
(`1000.0`), which twinbridge's integer keys refuse; this one writes whole numbers as integers
(values.schema.json allows only integers in the configuration), strings JSON-quoted (a valid TOML
basic string), tables as `[a.b]` sections and lists of tables as `[[a.b]]`. Null values are left
out (twinbridge's default applies).
*/}}

{{- define "twinbridge.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "twinbridge.toml.value" -}}
{{- $v := . -}}
{{- if kindIs "string" $v -}}{{ toJson $v }}
{{- else if kindIs "bool" $v -}}{{ ternary "true" "false" $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- if ne (float64 (int64 $v)) (float64 $v) -}}{{- fail (printf "config: %v is not a whole number" $v) -}}{{- end -}}
{{- int64 $v -}}
{{- else if kindIs "slice" $v -}}[{{ range $i, $e := $v }}{{ if $i }}, {{ end }}{{ include "twinbridge.toml.value" $e }}{{ end }}]
{{- else if kindIs "map" $v -}}{ {{- range $i, $k := keys $v | sortAlpha }}{{ if $i }},{{ end }} {{ include "twinbridge.toml.key" $k }} = {{ include "twinbridge.toml.value" (get $v $k) }}{{ end }} }
{{- else -}}{{ fail (printf "config: cannot write %v (%s) as TOML" $v (kindOf $v)) }}
{{- end -}}
{{- end -}}

{{/* Is this value a non-empty list of tables? */}}
{{- define "twinbridge.toml.isTableList" -}}
{{- if and (kindIs "slice" .) (gt (len .) 0) (kindIs "map" (first .)) -}}true{{- end -}}
{{- end -}}

{{/* One table: {path: "a.b" or "", table: map}. Plain keys first, then sub-tables, then lists of tables. */}}
{{- define "twinbridge.toml.table" -}}
{{- $path := .path -}}
{{- $t := .table -}}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- if not (or (kindIs "invalid" $v) (kindIs "map" $v) (include "twinbridge.toml.isTableList" $v)) }}
{{ include "twinbridge.toml.key" $k }} = {{ include "twinbridge.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- $sub := ternary (include "twinbridge.toml.key" $k) (printf "%s.%s" $path (include "twinbridge.toml.key" $k)) (eq $path "") }}
{{- if kindIs "map" $v }}

[{{ $sub }}]
{{- include "twinbridge.toml.table" (dict "path" $sub "table" $v) }}
{{- end }}
{{- end }}
{{- range $k := keys $t | sortAlpha }}
{{- $v := get $t $k }}
{{- $sub := ternary (include "twinbridge.toml.key" $k) (printf "%s.%s" $path (include "twinbridge.toml.key" $k)) (eq $path "") }}
{{- if include "twinbridge.toml.isTableList" $v }}
{{- range $e := $v }}

[[{{ $sub }}]]
{{- include "twinbridge.toml.table" (dict "path" $sub "table" $e) }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}
