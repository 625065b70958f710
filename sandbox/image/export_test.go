package image

// PullOnce lets the external tests reach the pull that Get shares.
var PullOnce = (*Store).pullOnce
