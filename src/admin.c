/* placeholder: filled in by the issue 14 work */
typedef int crest__admin_placeholder;
