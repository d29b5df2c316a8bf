/* placeholder: filled in by the issue 14 work */
typedef int crest__http_chunked_placeholder;
