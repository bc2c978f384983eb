//! The terminal's KVM virtual machine monitor that runs the user's appliances.
