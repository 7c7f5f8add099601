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
#       the ring-3 loop does the same when it reaches op 0 itself, and then starts over in
#       ring 3 (a batch of CPL3 probes costs one exit and no ring-0 work);
#     - a CPL3 probe: iretq into the ring-3 loop, which runs consecutive CPL3 probes natively
#       and comes back with `int3` at user_exit when it meets anything else (a #BP trap through
#       a DPL3 gate: the cheapest ring-3 to ring-0 transition measured on PVM);
#     - a CPL0 probe or a service: done here under a guard; a fault is recorded, not fatal.
#   A #PF in ring 3 (the common case of a permission matrix) takes a fast path: its stub sends
#   the error code, RIP and CR2 straight back to ring 3 in registers and the ring-3 loop records
#   them natively, so a faulting CPL3 probe costs five emulated instructions besides the two
#   ring switches. Other exceptions take the common handler (slower, but rare).
#   Any exception the agent did not expect: the registers are dumped to the kernel state page,
#   DOORBELL_UNEXPECTED is written and the vCPU halts.

        .text
        .code64

# the base of the agent's slot: the code starts at CODE_OFF in it, so one rip-relative lea finds
# it (every instruction counts: in ring 0 each one is emulated on a PVM host)
.set slot_base, header - CODE_OFF
.macro BASE reg
        lea     slot_base(%rip), \reg
.endm

header:
        .ascii  "KVMPAGNT"
        .long   1                               # agent ABI version
        .long   kernel_entry - header
        .long   user_code - header
        .long   isr_stubs - header
        .long   32                              # bytes per exception stub
        .long   user_exit - header
        .long   agent_end - header
        .long   0

# ---------------------------------------------------------------------------------------------
# ring 0: the dispatcher. Every instruction here is emulated on a PVM host (~0.6 us each), so
# the common paths are kept short. In the normal flow rbx = slot base and rsi = the current
# record (supervisor alias); KS_GUARD holds the last record ring 0 started, so a fault in ring 0
# is charged to it. RFLAGS (AC) and RSP persist across batches: the doorbell exit keeps them.
# ---------------------------------------------------------------------------------------------
kernel_entry:
        BASE    %rbx
        lea     CMD_SUPER_OFF(%rbx), %rsi
        jmp     dispatch

k_ok:
        movl    $ST_OK, R_STATUS(%rsi)
k_next:
        add     $RECORD_SIZE, %rsi
dispatch:
        mov     C_OP(%rsi), %eax
        mov     %rsi, KSTATE_OFF+KS_GUARD(%rbx)
        mov     C_ADDR(%rsi), %rdx
        cmp     $OP_READ, %eax                  # the ring-0 read: ten instructions a probe
        jne     1f
        mov     (%rdx), %rax
        mov     %rax, R_VALUE(%rsi)
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     dispatch
1:      cmp     $OP_WRITE, %eax                 # the write: eleven
        jne     1f
        mov     C_ARG(%rsi), %rcx
        mov     %rcx, (%rdx)
        movl    $ST_OK, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     dispatch
1:      cmp     $OP_FETCH, %eax
        jne     1f
        call    *%rdx
        BASE    %rbx                            # trust nothing the target may have touched
        mov     KSTATE_OFF+KS_GUARD(%rbx), %rsi
        lea     KSTACK_TOP_OFF(%rbx), %rsp
        mov     %rax, R_VALUE(%rsi)
        jmp     k_ok
1:      cmp     $OP_CPL3, %eax
        jae     enter_user
        test    %eax, %eax
        jz      batch_done
        mov     C_ARG(%rsi), %rcx
        cmp     $OP_INVLPG, %eax
        jne     1f
        invlpg  (%rdx)
        jmp     k_ok
1:      cmp     $OP_LOAD_CR3, %eax
        jne     1f
        mov     %rcx, %cr3
        mov     %cr3, %rax
        mov     %rax, R_VALUE(%rsi)
        jmp     k_ok
1:      cmp     $OP_WRITE_PHYS, %eax
        jne     1f
        movabs  $PHYSMAP_OFF, %rax
        add     %rbx, %rax
        mov     %rcx, (%rax,%rdx)
        jmp     k_ok
1:      cmp     $OP_READ_PHYS, %eax
        jne     1f
        movabs  $PHYSMAP_OFF, %rax
        add     %rbx, %rax
        mov     (%rax,%rdx), %rax
        mov     %rax, R_VALUE(%rsi)
        jmp     k_ok
1:      cmp     $OP_SET_WP, %eax
        jne     1f
        mov     %cr0, %rax
        btr     $16, %rax
        test    %rcx, %rcx
        jz      2f
        bts     $16, %rax
2:      mov     %rax, %cr0
        mov     %cr0, %rax
        mov     %rax, R_VALUE(%rsi)
        jmp     k_ok
1:      cmp     $OP_SET_SMEP, %eax
        jne     1f
        mov     %cr4, %rax
        btr     $20, %rax
        test    %rcx, %rcx
        jz      2f
        bts     $20, %rax
2:      mov     %rax, %cr4
        mov     %cr4, %rax
        mov     %rax, R_VALUE(%rsi)
        jmp     k_ok
1:      cmp     $OP_SET_SMAP, %eax
        jne     1f
        mov     %cr4, %rax
        btr     $21, %rax
        test    %rcx, %rcx
        jz      2f
        bts     $21, %rax
2:      mov     %rax, %cr4
        mov     %cr4, %rax
        mov     %rax, R_VALUE(%rsi)
        jmp     k_ok
1:      cmp     $OP_SET_AC, %eax
        jne     1f
        mov     $RFLAGS_DEFAULT, %eax
        test    %rcx, %rcx
        jz      2f
        or      $RFLAGS_AC, %eax
2:      mov     %rax, KSTATE_OFF+KS_RFLAGS(%rbx)
        mov     %rax, R_VALUE(%rsi)
        push    %rax
        popfq                                   # AC stays live while ring 0 dispatches
        jmp     k_ok
1:      cmp     $OP_SET_NXE, %eax
        jne     bad_op
        mov     %rcx, %rdi                      # rdmsr/wrmsr need ecx, eax and edx
        mov     $MSR_EFER, %ecx
        rdmsr
        btr     $11, %eax
        test    %rdi, %rdi
        jz      2f
        bts     $11, %eax
2:      wrmsr
        rdmsr
        shl     $32, %rdx
        or      %rdx, %rax
        mov     %rax, R_VALUE(%rsi)
        jmp     k_ok
bad_op:
        movl    $ST_BAD_OP, R_STATUS(%rsi)
        jmp     k_next

# eax = op with OP_CPL3 set; only the three probe kinds may run in ring 3
enter_user:
        cmp     $(OP_CPL3 + OP_FETCH), %eax
        ja      bad_op
        cmp     $(OP_CPL3 + OP_READ), %eax
        jb      bad_op
        lea     (CMD_USER_OFF - CMD_SUPER_OFF)(%rsi), %rax
        mov     %rax, USTATE_S_OFF+US_CURSOR(%rbx)
        lea     KSTATE_OFF+KS_IRET_FRAME(%rbx), %rsp   # the loader prebuilt this frame
        mov     $-1, %rax                       # "no fault": a #PF error code is below 2^32
        iretq

batch_done:
        movq    $DOORBELL_DONE, DOORBELL_OFF(%rbx)
        jmp     kernel_entry

# a #PF in ring 0 (from the #PF stub): charge it to the record ring 0 guards. Fourteen emulated
# instructions from the stub to the next dispatch; the result is four stores. RFLAGS is put
# back: the delivery of an exception in ring 0 clears AC on a PVM host, and ring 0 keeps AC
# for SMAP between records.
k_pf:
        BASE    %rbx
        mov     KSTATE_OFF+KS_GUARD(%rbx), %rsi
        test    %rsi, %rsi
        jz      1f
        pop     R_ERROR(%rsi)
        pop     R_RIP(%rsi)
        mov     %cr2, %rax
        mov     %rax, R_CR2(%rsi)
        movabs  $(14 << 32 | ST_FAULT), %rax    # status and vector, one store
        mov     %rax, R_STATUS(%rsi)
        lea     KSTACK_TOP_OFF(%rbx), %rsp
        pushq   KSTATE_OFF+KS_RFLAGS(%rbx)
        popfq
        jmp     k_next
1:      pushq   $14                             # no guard: nobody planned this one
        jmp     isr_common

# ---------------------------------------------------------------------------------------------
# exceptions: 32 stubs of 32 bytes, then the common handler
# ---------------------------------------------------------------------------------------------
        .balign 32
isr_stubs:
        .irp    vec, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
        .balign 32
        .if     \vec == 14
        # The #PF fast path. A fault in ring 3 goes straight back to ring 3, where the ring-3
        # loop records it natively: five emulated instructions, no store at all (the registers
        # carry the error code, the faulting RIP and CR2; the frame iretq loads is the loader's
        # prebuilt entry frame of the ring-3 loop). On a PVM host this path is what a faulting
        # probe costs, so every instruction here matters.
        testb   $3, 16(%rsp)                    # the CS the fault interrupted (after the error)
        jz      k_pf
        pop     %rax                            # the error code
        mov     %cr2, %rdx
        mov     (%rsp), %rcx                    # the faulting RIP
        lea     slot_base+KSTATE_OFF+KS_IRET_FRAME(%rip), %rsp
        iretq
        .else
        # the CPU pushes an error code for these vectors; the others get a 0 in its place
        .if     !((\vec == 8) || (\vec >= 10 && \vec <= 13) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30))
        pushq   $0
        .endif
        pushq   $\vec
        jmp     isr_common
        .endif
        .endr

# stack after isr_common's two pushes
.set F_RBX, 0
.set F_RAX, 8
.set F_VECTOR, 16
.set F_ERROR, 24
.set F_RIP, 32
.set F_CS, 40
.set F_RFLAGS, 48
.set F_RSP, 56
.set F_SS, 64

# record the fault described by the frame into the record at rsi (the host ignores CR2 unless
# the vector is #PF, so it is stored unconditionally)
.macro RECORD_FAULT
        mov     F_VECTOR(%rsp), %eax
        mov     %eax, R_VECTOR(%rsi)
        mov     F_ERROR(%rsp), %rax
        mov     %rax, R_ERROR(%rsi)
        mov     F_RIP(%rsp), %rax
        mov     %rax, R_RIP(%rsi)
        mov     %cr2, %rax
        mov     %rax, R_CR2(%rsi)
        movl    $ST_FAULT, R_STATUS(%rsi)
.endm

isr_common:
        push    %rax
        push    %rbx
        BASE    %rbx
        testb   $3, F_CS(%rsp)
        jnz     from_user
        mov     KSTATE_OFF+KS_GUARD(%rbx), %rsi
        test    %rsi, %rsi
        jz      unexpected
        RECORD_FAULT
        lea     KSTACK_TOP_OFF(%rbx), %rsp
        pushq   KSTATE_OFF+KS_RFLAGS(%rbx)
        popfq
        jmp     k_next

from_user:
        mov     USTATE_S_OFF+US_CURSOR(%rbx), %rsi
        add     $(CMD_SUPER_OFF - CMD_USER_OFF), %rsi
        lea     user_read_insn(%rip), %rax
        cmp     %rax, F_RIP(%rsp)
        je      user_fault
        lea     user_exit+1(%rip), %rax
        cmp     %rax, F_RIP(%rsp)
        je      user_yield
        lea     user_write_insn(%rip), %rax
        cmp     %rax, F_RIP(%rsp)
        je      user_fault
        lea     user_call_insn(%rip), %rax
        cmp     %rax, F_RIP(%rsp)
        je      user_fault
        cmpl    $(OP_CPL3 + OP_FETCH), C_OP(%rsi)
        jne     unexpected
        mov     C_ADDR(%rsi), %rax
        cmp     %rax, F_RIP(%rsp)
        jne     unexpected
user_fault:
        RECORD_FAULT
        addq    $RECORD_SIZE, USTATE_S_OFF+US_CURSOR(%rbx)
        lea     user_resume(%rip), %rax
        mov     %rax, F_RIP(%rsp)
        pop     %rbx
        pop     %rax
        add     $16, %rsp
        iretq
# the ring-3 loop handed back the record it stopped at (rsi); ring 0 gets its RFLAGS back
user_yield:
        cmpq    $3, F_VECTOR(%rsp)
        jne     unexpected
        lea     KSTACK_TOP_OFF(%rbx), %rsp
        pushq   KSTATE_OFF+KS_RFLAGS(%rbx)
        popfq
        jmp     dispatch

# an exception nobody planned: dump everything, ring the doorbell, halt
unexpected:
        lea     KSTATE_OFF+KS_DUMP(%rbx), %rbx
        mov     %rcx, 2*8(%rbx)
        mov     %rdx, 3*8(%rbx)
        mov     %rsi, 4*8(%rbx)
        mov     %rdi, 5*8(%rbx)
        mov     %rbp, 6*8(%rbx)
        mov     %r8, 7*8(%rbx)
        mov     %r9, 8*8(%rbx)
        mov     %r10, 9*8(%rbx)
        mov     %r11, 10*8(%rbx)
        mov     %r12, 11*8(%rbx)
        mov     %r13, 12*8(%rbx)
        mov     %r14, 13*8(%rbx)
        mov     %r15, 14*8(%rbx)
        mov     F_RAX(%rsp), %rax
        mov     %rax, 0*8(%rbx)
        mov     F_RBX(%rsp), %rax
        mov     %rax, 1*8(%rbx)
        xor     %ecx, %ecx
2:      mov     F_VECTOR(%rsp,%rcx,8), %rax
        mov     %rax, 15*8(%rbx,%rcx,8)
        inc     %ecx
        cmp     $7, %ecx
        jne     2b
        mov     %cr0, %rax
        mov     %rax, 22*8(%rbx)
        mov     %cr2, %rax
        mov     %rax, 23*8(%rbx)
        mov     %cr3, %rax
        mov     %rax, 24*8(%rbx)
        mov     %cr4, %rax
        mov     %rax, 25*8(%rbx)
        BASE    %rbx
        movq    $DOORBELL_UNEXPECTED, KSTATE_OFF+KS_STATUS(%rbx)
        movq    $DOORBELL_UNEXPECTED, DOORBELL_OFF(%rbx)
3:      hlt
        jmp     3b

# ---------------------------------------------------------------------------------------------
# ring 3: the probe loop (its own pages, mapped user-accessible and read-only)
# ---------------------------------------------------------------------------------------------
        .balign 4096
user_code:
# Entered by iretq: from enter_user with rax = -1, or from the #PF fast path with rax = the error
# code, rcx = the faulting RIP and rdx = CR2. Everything here runs natively.
user_entry:
        BASE    %rbx
        lea     USTACK_TOP_OFF(%rbx), %rsp
        add     $USTATE_U_OFF, %rbx
        mov     US_CURSOR(%rbx), %rsi
        cmp     $-1, %rax
        jne     user_pf
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
        jne     3f
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
3:      test    %eax, %eax
        jnz     user_exit
        # the end of the batch, reached in ring 3: ring the doorbell from here. The next
        # KVM_RUN resumes right after the write, still in ring 3, at the new batch's first
        # record, so a batch of ring-3 probes never visits ring 0.
        movq    $DOORBELL_DONE, (USER_DOORBELL_OFF - USTATE_U_OFF)(%rbx)
        BASE    %rbx
        lea     USTACK_TOP_OFF(%rbx), %rsp
        lea     CMD_USER_OFF(%rbx), %rsi
        add     $USTATE_U_OFF, %rbx
        jmp     user_loop
user_exit:
        int3

# a #PF in ring 3, passed up by the fast path: it must come from the current record's access
user_pf:
        lea     user_read_insn(%rip), %rdi
        cmp     %rdi, %rcx
        je      1f
        lea     user_write_insn(%rip), %rdi
        cmp     %rdi, %rcx
        je      1f
        lea     user_call_insn(%rip), %rdi
        cmp     %rdi, %rcx
        je      1f
        cmpl    $(OP_CPL3 + OP_FETCH), C_OP(%rsi)
        jne     user_unexpected
        cmp     C_ADDR(%rsi), %rcx
        jne     user_unexpected
1:      mov     %rax, R_ERROR(%rsi)
        mov     %rcx, R_RIP(%rsi)
        mov     %rdx, R_CR2(%rsi)
        movabs  $(14 << 32 | ST_FAULT), %rax
        mov     %rax, R_STATUS(%rsi)
        add     $RECORD_SIZE, %rsi
        jmp     user_loop
# anything else: trap to ring 0, whose slow path finds no probe here and dumps the registers
# (rax = the error code, rcx = the faulting RIP, rdx = CR2)
user_unexpected:
        ud2
# back from ring 0's slow path (a fault other than #PF, already recorded)
user_resume:
        mov     $-1, %rax
        jmp     user_entry
        .balign 16
agent_end:
