"""The networks. Every module in this folder is imported when ``archs.registry`` is, so a file here
holding ``@register_model("name")`` on a builder is all a new network needs."""
