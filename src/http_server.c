/* placeholder: filled in by the issue 14 work */
typedef int crest__http_server_placeholder;
