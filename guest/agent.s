# kvmpage guest agent (GNU as, x86-64, AT&T syntax).
#
# Assembled by `python -m kvmpage.machine.build`, which passes every layout and protocol
# constant with --defsym (kvmpage/machine/layout.py and protocol.py are the source of truth).
#
# The agent lives in one reserved PML4 slot and is position independent: it finds the slot base
# by masking its own RIP, so the same bytes run in any slot. It never trusts a register across
# an exception: the cursor, the resume points and the stacks are reloaded from memory or
# recomputed, because on a PVM host a general register was seen clobbered after a CPL0 fetch
# fault.
#
# Flow of one KVM_RUN:
#   kernel_entry (CPL0) -> dispatch each 64-byte command record in order:
#     - op 0: write DOORBELL_DONE to the doorbell page (an MMIO exit) and start over;
#     - a CPL3 probe: iretq into the ring-3 loop, which runs consecutive CPL3 probes natively
#       and comes back with `ud2` at user_exit_ud2 when it meets anything else;
#     - a CPL0 probe or a service: done here under a guard; a fault is recorded, not fatal.
#   Any exception the agent did not expect: the registers are dumped to the kernel state page,
#   DOORBELL_UNEXPECTED is written and the vCPU halts.

        .text
        .code64

.macro BASE reg
        lea     0(%rip), \reg
        shr     $39, \reg
        shl     $39, \reg
.endm

# rsi := supervisor address of the record at KS_CURSOR (needs rbx = base), clobbers rcx
.macro KRECORD
        mov     KSTATE_OFF+KS_CURSOR(%rbx), %rcx
        shl     $6, %rcx
        lea     CMD_SUPER_OFF(%rbx,%rcx), %rsi
.endm

header:
        .ascii  "KVMPAGNT"
        .long   1                               # agent ABI version
        .long   kernel_entry - header
        .long   user_code - header
        .long   isr_stubs - header
        .long   16                              # bytes per exception stub
        .long   user_exit_ud2 - header
        .long   agent_end - header
        .long   0

# ---------------------------------------------------------------------------------------------
# ring 0: the dispatcher
# ---------------------------------------------------------------------------------------------
kernel_entry:
        BASE    %rbx
        movq    $0, KSTATE_OFF+KS_CURSOR(%rbx)
        movq    $0, KSTATE_OFF+KS_STATUS(%rbx)
        movq    $0, KSTATE_OFF+KS_GUARD(%rbx)

kernel_dispatch:
        pushq   $RFLAGS_DEFAULT
        popfq
        BASE    %rbx
        lea     KSTACK_TOP_OFF(%rbx), %rsp
        KRECORD
        mov     C_OP(%rsi), %eax
        test    %eax, %eax
        jz      batch_done
        test    $OP_CPL3, %eax
        jnz     enter_user
        movq    $1, KSTATE_OFF+KS_GUARD(%rbx)
        mov     C_ADDR(%rsi), %rdx
        mov     C_ARG(%rsi), %rcx
        xor     %edi, %edi
        cmp     $OP_READ, %eax
        je      k_read
        cmp     $OP_WRITE, %eax
        je      k_write
        cmp     $OP_FETCH, %eax
        je      k_fetch
        cmp     $OP_INVLPG, %eax
        je      k_invlpg
        cmp     $OP_LOAD_CR3, %eax
        je      k_load_cr3
        cmp     $OP_WRITE_PHYS, %eax
        je      k_write_phys
        cmp     $OP_READ_PHYS, %eax
        je      k_read_phys
        cmp     $OP_SET_WP, %eax
        je      k_set_wp
        cmp     $OP_SET_SMEP, %eax
        je      k_set_smep
        cmp     $OP_SET_SMAP, %eax
        je      k_set_smap
        cmp     $OP_SET_AC, %eax
        je      k_set_ac
        mov     $ST_BAD_OP, %eax
        jmp     k_finish

k_read:
        pushq   KSTATE_OFF+KS_RFLAGS(%rbx)
        popfq
        mov     (%rdx), %rdi
        jmp     k_ok
k_write:
        pushq   KSTATE_OFF+KS_RFLAGS(%rbx)
        popfq
        mov     %rcx, (%rdx)
        jmp     k_ok
k_fetch:
        pushq   KSTATE_OFF+KS_RFLAGS(%rbx)
        popfq
        call    *%rdx
        mov     %rax, %rdi
        jmp     k_ok
k_invlpg:
        invlpg  (%rdx)
        jmp     k_ok
k_load_cr3:
        mov     %rcx, %cr3
        mov     %cr3, %rdi
        jmp     k_ok
k_write_phys:
        movabs  $PHYSMAP_OFF, %rax
        add     %rbx, %rax
        mov     %rcx, (%rax,%rdx)
        jmp     k_ok
k_read_phys:
        movabs  $PHYSMAP_OFF, %rax
        add     %rbx, %rax
        mov     (%rax,%rdx), %rdi
        jmp     k_ok
k_set_wp:
        mov     %cr0, %rax
        btr     $16, %rax
        test    %rcx, %rcx
        jz      1f
        bts     $16, %rax
1:      mov     %rax, %cr0
        mov     %cr0, %rdi
        jmp     k_ok
k_set_smep:
        mov     %cr4, %rax
        btr     $20, %rax
        test    %rcx, %rcx
        jz      1f
        bts     $20, %rax
1:      mov     %rax, %cr4
        mov     %cr4, %rdi
        jmp     k_ok
k_set_smap:
        mov     %cr4, %rax
        btr     $21, %rax
        test    %rcx, %rcx
        jz      1f
        bts     $21, %rax
1:      mov     %rax, %cr4
        mov     %cr4, %rdi
        jmp     k_ok
k_set_ac:
        mov     $RFLAGS_DEFAULT, %edi
        test    %rcx, %rcx
        jz      1f
        or      $RFLAGS_AC, %edi
1:      mov     %rdi, KSTATE_OFF+KS_RFLAGS(%rbx)
        jmp     k_ok

# rdi = result value; a fetch stub may have changed anything but rdi, so recompute the rest
k_ok:
        mov     $ST_OK, %eax
k_finish:
        pushq   $RFLAGS_DEFAULT
        popfq
        BASE    %rbx
        KRECORD
        mov     %rdi, R_VALUE(%rsi)
        mov     %eax, R_STATUS(%rsi)
        movq    $0, KSTATE_OFF+KS_GUARD(%rbx)
        incq    KSTATE_OFF+KS_CURSOR(%rbx)
        jmp     kernel_dispatch

# eax = op with OP_CPL3 set; only the three probe kinds may run in ring 3
enter_user:
        mov     %eax, %edx
        sub     $(OP_CPL3 + OP_READ), %edx
        cmp     $(OP_FETCH - OP_READ), %edx
        ja      bad_user_op
        lea     CMD_USER_OFF(%rbx,%rcx), %rdx
        mov     %rdx, USTATE_S_OFF+US_CURSOR(%rbx)
        pushq   $USER_DS
        lea     USTACK_TOP_OFF(%rbx), %rax
        push    %rax
        pushq   $RFLAGS_DEFAULT
        pushq   $USER_CS
        lea     user_entry(%rip), %rax
        push    %rax
        iretq
bad_user_op:
        xor     %edi, %edi
        mov     $ST_BAD_OP, %eax
        jmp     k_finish

batch_done:
        movq    $DOORBELL_DONE, KSTATE_OFF+KS_STATUS(%rbx)
        movl    $DOORBELL_DONE, DOORBELL_OFF(%rbx)
        jmp     kernel_entry

# ---------------------------------------------------------------------------------------------
# exceptions: 32 stubs of 16 bytes, then the common handler
# ---------------------------------------------------------------------------------------------
        .balign 16
isr_stubs:
        .irp    vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .balign 16
        .if     (\vec == 8) || (\vec >= 10 && \vec <= 14) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
        nop
        nop
        .else
        pushq   $0
        .endif
        pushq   $\vec
        jmp     isr_common
        .endr

# stack: 0 rdi, 8 rsi, 16 rdx, 24 rcx, 32 rbx, 40 rax, 48 vector, 56 error, 64 rip, 72 cs,
#        80 rflags, 88 rsp, 96 ss
.set F_VECTOR, 48
.set F_ERROR, 56
.set F_RIP, 64
.set F_CS, 72

# record the fault described by the frame into the record at rsi
.macro RECORD_FAULT
        mov     F_VECTOR(%rsp), %rax
        mov     %eax, R_VECTOR(%rsi)
        mov     F_ERROR(%rsp), %rax
        mov     %rax, R_ERROR(%rsi)
        mov     F_RIP(%rsp), %rax
        mov     %rax, R_RIP(%rsi)
        xor     %eax, %eax
        cmpq    $14, F_VECTOR(%rsp)
        jne     77f
        mov     %cr2, %rax
77:     mov     %rax, R_CR2(%rsi)
        movq    $0, R_VALUE(%rsi)
        movl    $ST_FAULT, R_STATUS(%rsi)
.endm

isr_common:
        push    %rax
        push    %rbx
        push    %rcx
        push    %rdx
        push    %rsi
        push    %rdi
        BASE    %rbx
        testb   $3, F_CS(%rsp)
        jnz     from_user
        cmpq    $0, KSTATE_OFF+KS_GUARD(%rbx)
        je      unexpected
        KRECORD
        RECORD_FAULT
        movq    $0, KSTATE_OFF+KS_GUARD(%rbx)
        incq    KSTATE_OFF+KS_CURSOR(%rbx)
        jmp     kernel_dispatch

from_user:
        mov     USTATE_S_OFF+US_CURSOR(%rbx), %rsi
        add     $(CMD_SUPER_OFF - CMD_USER_OFF), %rsi
        mov     F_RIP(%rsp), %rdx
        lea     user_read_insn(%rip), %rax
        cmp     %rax, %rdx
        je      user_probe_fault
        lea     user_write_insn(%rip), %rax
        cmp     %rax, %rdx
        je      user_probe_fault
        lea     user_call_insn(%rip), %rax
        cmp     %rax, %rdx
        je      user_probe_fault
        cmpl    $(OP_CPL3 + OP_FETCH), C_OP(%rsi)
        jne     1f
        cmp     C_ADDR(%rsi), %rdx
        je      user_probe_fault
1:      lea     user_exit_ud2(%rip), %rax
        cmp     %rax, %rdx
        jne     unexpected
        cmpq    $6, F_VECTOR(%rsp)
        jne     unexpected
        # the ring-3 loop handed back the record it stopped at
        sub     %rbx, %rsi
        sub     $CMD_SUPER_OFF, %rsi
        shr     $6, %rsi
        mov     %rsi, KSTATE_OFF+KS_CURSOR(%rbx)
        jmp     kernel_dispatch

user_probe_fault:
        RECORD_FAULT
        addq    $RECORD_SIZE, USTATE_S_OFF+US_CURSOR(%rbx)
        lea     user_entry(%rip), %rax
        mov     %rax, F_RIP(%rsp)
        pop     %rdi
        pop     %rsi
        pop     %rdx
        pop     %rcx
        pop     %rbx
        pop     %rax
        add     $16, %rsp
        iretq

unexpected:
        lea     KSTATE_OFF+KS_DUMP(%rbx), %rdi
        xor     %ecx, %ecx
2:      mov     (%rsp,%rcx,8), %rax
        mov     %rax, (%rdi,%rcx,8)
        inc     %ecx
        cmp     $13, %ecx
        jne     2b
        mov     %r8, 13*8(%rdi)
        mov     %r9, 14*8(%rdi)
        mov     %r10, 15*8(%rdi)
        mov     %r11, 16*8(%rdi)
        mov     %r12, 17*8(%rdi)
        mov     %r13, 18*8(%rdi)
        mov     %r14, 19*8(%rdi)
        mov     %r15, 20*8(%rdi)
        mov     %rbp, 21*8(%rdi)
        mov     %cr0, %rax
        mov     %rax, 22*8(%rdi)
        mov     %cr2, %rax
        mov     %rax, 23*8(%rdi)
        mov     %cr3, %rax
        mov     %rax, 24*8(%rdi)
        mov     %cr4, %rax
        mov     %rax, 25*8(%rdi)
        movq    $DOORBELL_UNEXPECTED, KSTATE_OFF+KS_STATUS(%rbx)
        movl    $DOORBELL_UNEXPECTED, DOORBELL_OFF(%rbx)
3:      hlt
        jmp     3b

# ---------------------------------------------------------------------------------------------
# ring 3: the probe loop (its own pages, mapped user-accessible and read-only)
# ---------------------------------------------------------------------------------------------
        .balign 4096
user_code:
user_entry:
        BASE    %rbx
        lea     USTACK_TOP_OFF(%rbx), %rsp
        add     $USTATE_U_OFF, %rbx
        mov     US_CURSOR(%rbx), %rsi
user_loop:
        mov     %rsi, US_CURSOR(%rbx)
        mov     C_OP(%rsi), %eax
        cmp     $(OP_CPL3 + OP_READ), %eax
        jne     1f
        mov     C_ADDR(%rsi), %rdx
user_read_insn:
        mov     (%rdx), %rax
        mov     %rax, R_VALUE(%rsi)
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     user_loop
1:      cmp     $(OP_CPL3 + OP_WRITE), %eax
        jne     2f
        mov     C_ADDR(%rsi), %rdx
        mov     C_ARG(%rsi), %rcx
user_write_insn:
        mov     %rcx, (%rdx)
        movq    $0, R_VALUE(%rsi)
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     user_loop
2:      cmp     $(OP_CPL3 + OP_FETCH), %eax
        jne     user_exit_ud2
        mov     C_ADDR(%rsi), %rdx
user_call_insn:
        call    *%rdx
        BASE    %rbx
        lea     USTACK_TOP_OFF(%rbx), %rsp
        add     $USTATE_U_OFF, %rbx
        mov     US_CURSOR(%rbx), %rsi
        mov     %rax, R_VALUE(%rsi)
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     user_loop
user_exit_ud2:
        ud2
        .balign 16
agent_end:
